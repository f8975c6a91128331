// Preloaded into the peer gateway under benchmark: every server it starts listens on
// 127.0.0.1 only (it has no option for the address), as every server this project starts does.
import net from 'node:net';

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number')
    return listen.call(this, args[0], '127.0.0.1', ...args.slice(1).filter((a) => typeof a === 'function'));
  if (args[0] && typeof args[0] === 'object' && !args[0].path)
    return listen.call(this, { ...args[0], host: '127.0.0.1' }, ...args.slice(1));
  return listen.apply(this, args);
};
