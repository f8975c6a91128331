// `clawgate gateway`: the gateway as a process. Logs are JSON lines (pino) on stdout; SIGTERM
// or SIGINT stops it cleanly (the sync position of an event not yet handled is not saved, so
// the event comes again at the next start).
import { Runtime } from '@temporalio/worker';
import { pino } from 'pino';
import { loadGatewayConfig } from './config.ts';
import { Gateway } from './gateway.ts';

export async function runGateway(opts: { config: string; logLevel: string }): Promise<void> {
  const config = loadGatewayConfig(opts.config);
  const logger = pino({
    name: 'clawgate-gateway',
    level: opts.logLevel,
    redact: { paths: ['accessToken', 'password', '*.accessToken', '*.password'], censor: '[secret]' },
  });
  const temporalLog = logger.child({ component: 'temporal' });
  Runtime.install({
    logger: {
      log: (level, message, meta) => {
        if (level === 'WARN') temporalLog.warn(meta ?? {}, message);
        else if (level === 'ERROR') temporalLog.error(meta ?? {}, message);
      },
      trace: () => {},
      debug: () => {},
      info: () => {},
      warn: (message, meta) => temporalLog.warn(meta ?? {}, message),
      error: (message, meta) => temporalLog.error(meta ?? {}, message),
    },
  });
  const fault = process.env['CLAWGATE_GATEWAY_FAULT'];
  const gateway = await Gateway.start(config, { logger, ...(fault ? { fault } : {}) });
  logger.info(
    { health: gateway.healthUrl, accounts: gateway.accounts.map((a) => a.config.id) },
    'gateway running',
  );
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      logger.info({ signal }, 'stopping');
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  await gateway.stop();
  logger.info('stopped');
  // matrix-js-sdk can leave timers behind; they must not keep a stopped gateway alive.
  setTimeout(() => process.exit(), 1000).unref();
}
