// docker-compose.yml cannot run here (no Docker engine), so this checks what can be checked:
// the file parses, every long-running service has a health check, every clawgate service runs
// a command the project has, its configuration and policy validate and pass the security
// audit's network checks, the images are pinned, and the Dockerfile copies what exists.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { parse } from 'yaml';
import { buildProgram } from '../../../src/cli/main.ts';
import { audit } from '../../../src/config/audit.ts';
import { loadConfig } from '../../../src/config/config.ts';
import { loadWpc } from '../../../src/policy/wpc.ts';
import { CLAWGATE_SEARCH_ATTRIBUTES } from '../../../src/temporal/search-attributes.ts';

const root = fileURLToPath(new URL('../../../', import.meta.url));
interface Service {
  image?: string;
  build?: string;
  command?: string[] | string;
  healthcheck?: { test: string[] };
  network_mode?: string;
  volumes?: string[];
  depends_on?: Record<string, { condition: string }>;
}
const compose = parse(readFileSync(join(root, 'docker-compose.yml'), 'utf8'), { merge: true }) as {
  services: Record<string, Service>;
};
const services = Object.entries(compose.services);

test('every long-running service has a health check and a pinned image', () => {
  for (const [name, service] of services) {
    if (name !== 'temporal-search-attributes') assert.ok(service.healthcheck, `${name} has a health check`);
    assert.ok(service.image, `${name} names an image`);
    assert.doesNotMatch(service.image ?? '', /:latest$|^[^:]+$/, `${name}: a pinned tag`);
    if (name !== 'pod')
      assert.equal(service.network_mode, 'service:pod', `${name} shares the pod's loopback`);
    for (const dependency of Object.keys(service.depends_on ?? {})) {
      assert.ok(compose.services[dependency], `${name} depends on ${dependency}, which exists`);
    }
  }
});

test('the clawgate services run commands the project has, with files that exist', () => {
  const commands = new Set(buildProgram().commands.map((c) => c.name()));
  const clawgate = services.filter(([, s]) => s.build === '.');
  assert.deepEqual(clawgate.map(([n]) => n).sort(), [
    'clawgate-codec',
    'clawgate-gateway',
    'clawgate-proxy',
    'clawgate-worker',
  ]);
  for (const [name, service] of clawgate) {
    const [command] = Array.isArray(service.command) ? service.command : [service.command];
    assert.ok(command && commands.has(command), `${name}: clawgate ${command} exists`);
    for (const volume of service.volumes ?? []) {
      const [source] = volume.split(':');
      if (source?.startsWith('./'))
        assert.ok(existsSync(join(root, source)), `${name} mounts ${source}, which exists`);
    }
  }
  const dockerfile = readFileSync(join(root, 'Dockerfile'), 'utf8');
  for (const [, source] of dockerfile.matchAll(/^COPY (\S+)/gm)) {
    for (const path of (source ?? '').split(' '))
      assert.ok(existsSync(join(root, path)), `Dockerfile copies ${path}`);
  }
  assert.match(dockerfile, /^ENTRYPOINT \["bin\/clawgate"\]$/m);
});

test("the deployment's configuration and policy validate, and pass the audit's network checks", () => {
  const config = loadConfig(join(root, 'deploy/clawgate.yaml'), {
    CLAWGATE_ACCOUNT_MAIN_PASSWORD: 'from-the-environment',
    CLAWGATE_STATE_DIR: mkdtempSync(join(tmpdir(), 'clawgate-deploy-')),
  });
  assert.equal(config.gateway.accounts?.[0]?.password, 'from-the-environment');
  assert.equal(config.policy.initial, '/etc/clawgate/policy.json');
  loadWpc(readFileSync(join(root, 'deploy/policy.json'), 'utf8'));
  const findings = audit(config).filter((f) => /listen|TLS|HTTP/.test(f.what));
  assert.deepEqual(findings, []);
});

test("the Web UI asks clawgate's codec server, which answers the UI's origin", () => {
  const ui = compose.services['temporal-ui'] as Service & { environment?: Record<string, string> };
  assert.match(ui.environment?.['TEMPORAL_CODEC_ENDPOINT'] ?? '', /127\.0\.0\.1:8793\}$/);
  assert.equal(ui.environment?.['TEMPORAL_UI_PORT'], '8080');
  const config = loadConfig(join(root, 'deploy/clawgate.yaml'));
  assert.equal(config.codec.listen.port, 8793);
  assert.equal(config.codec.uiOrigin, 'http://127.0.0.1:8080');
});

test('the compose file registers exactly the search attributes clawgate defines', () => {
  const command = String((compose.services['temporal-search-attributes']?.command as string[])[0]);
  const named = [...command.matchAll(/(Clawgate\w+)=(\w+)/g)].map((m) => m[1]).sort();
  assert.deepEqual(named, CLAWGATE_SEARCH_ATTRIBUTES.map((k) => k.name).sort());
});
