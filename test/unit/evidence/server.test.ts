// The evidence server's routes: the page, the bundle's bytes and its Clawsig export per digest,
// and nothing else. A digest that is not a SHA-256 is refused before any file is read, an unknown
// one is not found, nothing is listed, nothing but GET and HEAD is allowed, and a path never
// reaches a file the three patterns do not name.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { parseConfig } from '../../../src/config/config.ts';
import { bundleDigest, canonicalHash } from '../../../src/evidence/bundle.ts';
import {
  EVIDENCE_ERRORS,
  evidenceBaseUrl,
  evidencePageUrl,
  startEvidenceServer,
  type RunningEvidenceServer,
} from '../../../src/evidence/server.ts';
import { HOSTILE_TEXT, sealedFixture, type Fixture } from './page-fixture.ts';

let fixture: Fixture;
let server: RunningEvidenceServer;
let dir: string;
let bundlePath: string;
const SECRET = 'the-content-of-a-file-beside-the-bundles';

before(async () => {
  fixture = await sealedFixture();
  dir = mkdtempSync(join(tmpdir(), 'clawgate-evidence-'));
  bundlePath = join(dir, `${fixture.digest}.json`);
  writeFileSync(bundlePath, `${JSON.stringify(fixture.bundle, null, 2)}\n`);
  // A secret beside the bundle folder, which no path may reach.
  writeFileSync(join(dir, '..', `clawgate-evidence-secret-${process.pid}`), SECRET);
  server = await startEvidenceServer({
    host: '127.0.0.1',
    port: 0,
    bundleDir: dir,
    jwks: () => fixture.jwks,
    keysSource: 'the test keys',
    now: () => new Date('2026-12-02T08:00:00Z'),
  });
});

after(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
  rmSync(join(dir, '..', `clawgate-evidence-secret-${process.pid}`), { force: true });
});

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  json: () => { error?: { code: string; message: string }; status?: string };
}

/** A request with the path exactly as given (no client normalises it). */
function call(method: string, path: string): Promise<Answer> {
  const { port } = new URL(server.url);
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body,
          json: () => JSON.parse(body.toString('utf8')) as ReturnType<Answer['json']>,
        });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

test('GET /bundles/<digest>: the page, verified now, with its safety headers', async () => {
  const r = await call('GET', `/bundles/${fixture.digest}`);
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-type'], 'text/html; charset=utf-8');
  assert.match(String(r.headers['content-security-policy']), /default-src 'none'/);
  assert.match(String(r.headers['content-security-policy']), /frame-ancestors 'none'/);
  assert.equal(r.headers['x-content-type-options'], 'nosniff');
  assert.equal(r.headers['referrer-policy'], 'no-referrer');
  assert.match(String(r.headers['cache-control']), /no-cache/);
  const page = r.body.toString('utf8');
  assert.match(page, /VERIFIED/);
  assert.ok(page.includes(`href="${fixture.digest}.json"`), 'a link to the bundle beside it');
  assert.ok(!page.includes('<script>alert(1)'), 'the request text is escaped');
  assert.ok(page.includes('&lt;script&gt;alert(1)&lt;/script&gt;'));
  assert.ok(!page.includes(HOSTILE_TEXT));
});

test('GET /bundles/<digest>.json: the bundle file, byte for byte', async () => {
  const r = await call('GET', `/bundles/${fixture.digest}.json`);
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-type'], 'application/json');
  assert.equal(r.headers['x-content-type-options'], 'nosniff');
  assert.ok(r.body.equals(readFileSync(bundlePath)));
});

test('GET /bundles/<digest>.clawsig.json: 404 saying so until the export is beside the bundle, then its bytes', async () => {
  const missing = await call('GET', `/bundles/${fixture.digest}.clawsig.json`);
  assert.equal(missing.status, 404);
  assert.equal(missing.json().error?.code, EVIDENCE_ERRORS.clawsigNotFound);
  assert.match(missing.json().error?.message ?? '', /has no Clawsig export beside it/);
  const unknown = await call('GET', `/bundles/${'e'.repeat(64)}.clawsig.json`);
  assert.equal(unknown.json().error?.code, EVIDENCE_ERRORS.clawsigNotFound);
  assert.match(unknown.json().error?.message ?? '', /there is no bundle/);

  const exported = Buffer.from('{"clawsig":"v1"}\n');
  writeFileSync(join(dir, `${fixture.digest}.clawsig.json`), exported);
  const r = await call('GET', `/bundles/${fixture.digest}.clawsig.json`);
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-type'], 'application/json');
  assert.ok(r.body.equals(exported));
});

test('a digest that is not 64 lowercase hex characters is 400, naming what is wrong', async () => {
  for (const name of [
    'abc',
    fixture.digest.toUpperCase(),
    `${fixture.digest}0`,
    fixture.digest.slice(1),
    '..%2F..%2Fetc%2Fpasswd',
    '%2e%2e',
    '..',
    `${fixture.digest}.html`,
    `${fixture.digest}.clawsig`,
  ]) {
    const r = await call('GET', `/bundles/${name}`);
    assert.equal(r.status, 400, name);
    assert.equal(r.json().error?.code, EVIDENCE_ERRORS.digestInvalid);
    assert.match(r.json().error?.message ?? '', /is not a bundle digest: .*64 lowercase hex characters/);
    assert.equal(r.headers['content-type'], 'application/json; charset=utf-8');
  }
});

test('an unknown digest is 404; nothing is listed and no other path is served', async () => {
  const unknown = await call('GET', `/bundles/${'0'.repeat(64)}`);
  assert.equal(unknown.status, 404);
  assert.equal(unknown.json().error?.code, EVIDENCE_ERRORS.bundleNotFound);
  assert.equal((await call('GET', `/bundles/${'0'.repeat(64)}.json`)).status, 404);
  for (const path of [
    '/bundles',
    '/bundles/',
    `/bundles/${fixture.digest}/`,
    `/bundles/${fixture.digest}/x`,
    `/bundles/../clawgate-evidence-secret-${process.pid}`,
    `/${fixture.digest}.json`,
    '/keys',
    '/etc/passwd',
    '//bundles',
  ]) {
    const r = await call('GET', path);
    assert.equal(r.status, 404, path);
    assert.ok(!r.body.includes(fixture.digest) || path.includes(fixture.digest), `${path} names no bundle`);
    assert.ok(!r.body.includes(SECRET));
  }
  const index = await call('GET', '/');
  assert.equal(index.status, 200);
  assert.ok(!index.body.toString('utf8').includes(fixture.digest), 'the index lists no bundle');
});

test('read-only: any method but GET and HEAD is 405 with Allow; HEAD has the headers and no body', async () => {
  for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']) {
    const r = await call(method, `/bundles/${fixture.digest}`);
    assert.equal(r.status, 405, method);
    assert.equal(r.headers['allow'], 'GET, HEAD');
    assert.equal(r.json().error?.code, EVIDENCE_ERRORS.methodNotAllowed);
  }
  const head = await call('HEAD', `/bundles/${fixture.digest}.json`);
  assert.equal(head.status, 200);
  assert.equal(head.body.length, 0);
  assert.equal(Number(head.headers['content-length']), readFileSync(bundlePath).length);
});

test('GET /health is 200 JSON', async () => {
  const r = await call('GET', '/health');
  assert.equal(r.status, 200);
  assert.deepEqual(r.json(), { status: 'ok' });
  assert.equal(r.headers['cache-control'], 'no-store');
});

test('a tampered bundle, or a file whose content is not its name, gets a page that says FAILED', async () => {
  const tampered = structuredClone(fixture.bundle);
  (tampered.entries[1] as { body: { text: string } }).body.text = '!claw something else';
  const digest = bundleDigest(tampered);
  writeFileSync(join(dir, `${digest}.json`), JSON.stringify(tampered));
  const page = (await call('GET', `/bundles/${digest}`)).body.toString('utf8');
  assert.match(page, /Verification FAILED/);
  assert.match(page, /its content differs from what was sealed/);

  const other = canonicalHash('another bundle');
  writeFileSync(join(dir, `${other}.json`), JSON.stringify(fixture.bundle));
  const renamed = (await call('GET', `/bundles/${other}`)).body.toString('utf8');
  assert.match(renamed, /Verification FAILED/);
  assert.match(renamed, /is stored as [0-9a-f]{64}\.json, but the digest of what it holds is/);

  writeFileSync(join(dir, `${canonicalHash('not json')}.json`), 'not json {');
  const broken = await call('GET', `/bundles/${canonicalHash('not json')}`);
  assert.equal(broken.status, 200);
  assert.match(broken.body.toString('utf8'), /Verification FAILED/);
});

test('page links and the base URL: configured, or the listening address', () => {
  const digest = 'a'.repeat(64);
  assert.equal(
    evidencePageUrl('https://evidence.example.org/', digest),
    `https://evidence.example.org/bundles/${digest}`,
  );
  assert.equal(evidencePageUrl('http://127.0.0.1:8792', digest), `http://127.0.0.1:8792/bundles/${digest}`);
  const config = parseConfig({});
  assert.deepEqual(config.evidence.listen, { host: '127.0.0.1', port: 8792 });
  assert.equal(evidenceBaseUrl(config.evidence), 'http://127.0.0.1:8792');
  assert.equal(
    evidenceBaseUrl(parseConfig({ evidence: { baseUrl: 'https://review.example.org/' } }).evidence),
    'https://review.example.org',
  );
  assert.equal(evidenceBaseUrl({ listen: { host: '::1', port: 9 } }), 'http://[::1]:9');
  assert.throws(() => parseConfig({ evidence: { baseUrl: 'ftp://x' } }), /evidence\.baseUrl/);
});
