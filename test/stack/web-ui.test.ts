// The Temporal Web UI as an operator uses it, in a real browser (headless Chromium, the system's
// own, driven by puppeteer-core): `clawgate start` on fresh state, a job asked for in the demo
// room, then in the dev server's UI the job list finds the job by ClawgateStatus and by
// ClawgateJobId, the job's page shows its input and its current details decrypted by the codec
// server, and the UI's own "Request Cancellation" button ends the job as cancelled, with its
// bundle sealed. The page texts and screenshots stay in the run's folder (web-ui/).
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { freeLoopbackPort } from '../../src/devstack/net.ts';
import { chromiumPath } from '../../src/devstack/tools.ts';
import { testServers } from '../harness/servers.ts';

const bin = fileURLToPath(new URL('../../bin/clawgate', import.meta.url));
const state = join(mkdtempSync(join(tmpdir(), 'clawgate-web-ui-')), 'state');
const env: NodeJS.ProcessEnv = { ...process.env, CLAWGATE_STATE_DIR: state };
delete env['CLAWGATE_CONFIG'];
// The stack's own payload keyring, as on a fresh machine: the UI can read only what its codec
// server decrypts.
delete env['CLAWGATE_PAYLOAD_KEYS_DIR'];
const REQUEST = 'summarise the readme for the operators';

let stack: ChildProcess | undefined;
let stackOutput = '';
let browser: Browser | undefined;

function clawgate(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(bin, args, { env, cwd: tmpdir() }, (error, stdout, stderr) => {
      resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr });
    });
  });
}

async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline)
      throw new Error(
        `${what}: not within ${timeoutMs / 1000} s${last ? ` (${last instanceof Error ? last.message : JSON.stringify(last)})` : ''}`,
      );
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** Every visible text of the page, its frames included (the UI renders metadata in frames). */
async function pageText(page: Page): Promise<string> {
  const texts: string[] = [];
  for (const frame of page.frames()) {
    texts.push(await frame.evaluate(() => document.body?.innerText ?? '').catch(() => ''));
  }
  return texts.join('\n');
}

/** The links of a job list page to a workflow's history, one per workflow. */
async function workflowLinks(page: Page): Promise<string[]> {
  const hrefs = await page.evaluate(() =>
    [...document.querySelectorAll('a')].map((a) => a.href).filter((h) => h.endsWith('/history')),
  );
  return [...new Set(hrefs)];
}

/** Clicks the visible button, link or tab whose text is `text`; whether there was one. */
function clickText(page: Page, text: string): Promise<boolean> {
  return page.evaluate((wanted) => {
    const found = [...document.querySelectorAll<HTMLElement>('button, a, [role=tab]')].find(
      (e) => e.offsetParent !== null && e.innerText.trim() === wanted,
    );
    found?.click();
    return found !== undefined;
  }, text);
}

after(async () => {
  await browser?.close();
  if (stack && stack.exitCode === null) {
    stack.kill('SIGKILL');
    await new Promise((r) => stack?.once('exit', r));
  }
});

test('in the Web UI an operator finds a job by status and by job id, reads it decrypted, and cancels it with its button', async () => {
  const executablePath = chromiumPath();
  assert.ok(existsSync(executablePath), `Chromium is not at ${executablePath}; run \`npm run bootstrap\``);
  const outputDir = join(testServers().runDir, 'web-ui');
  mkdirSync(outputDir, { recursive: true });
  for (const name of [
    'CLAWGATE_TEMPORAL_PORT',
    'CLAWGATE_TEMPORAL_UI_PORT',
    'CLAWGATE_SYNAPSE_PORT',
    'CLAWGATE_PROXY_PORT',
    'CLAWGATE_HEALTH_PORT',
    'CLAWGATE_EVIDENCE_PORT',
    'CLAWGATE_CODEC_PORT',
    'CLAWGATE_WORKER_HEALTH_PORT',
  ]) {
    env[name] = String(await freeLoopbackPort());
  }
  const child = spawn(bin, ['start'], { env, cwd: tmpdir(), stdio: ['ignore', 'pipe', 'pipe'] });
  stack = child;
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stackOutput += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stackOutput += chunk));
  await until('clawgate start ready', 180_000, () => {
    if (child.exitCode !== null) throw new Error(`clawgate start exited ${child.exitCode}:\n${stackOutput}`);
    return Promise.resolve(stackOutput.includes('clawgate is ready') ? true : undefined);
  });
  const ui = `http://127.0.0.1:${env['CLAWGATE_TEMPORAL_UI_PORT']}`;

  const asked = await clawgate('say', '--as', 'requester', 'demo', `!claw ${REQUEST}`);
  assert.equal(asked.code, 0, asked.stderr);
  const jobId = await until('the job waiting for approval', 90_000, async () => {
    const { stdout } = await clawgate('jobs', 'list');
    return /^(j[a-z2-7]{9})\s+awaiting_approval/m.exec(stdout)?.[1];
  });

  browser = await puppeteer.launch({
    executablePath,
    headless: true,
    // Chromium's own sandbox refuses to start as root (as CI runs); elsewhere it stays on.
    args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
  });
  const page = await browser.newPage();
  await page.setViewport({ width: 1400, height: 1000 });
  const list = async (query: string): Promise<string[]> => {
    await page.goto(`${ui}/namespaces/default/workflows?query=${encodeURIComponent(query)}`, {
      waitUntil: 'domcontentloaded',
    });
    // The list is filled by the UI's own calls; an empty one is waited out for a few seconds.
    return until(`the job list for ${query}`, 15_000, async () => {
      const links = await workflowLinks(page);
      return links.length > 0 ? links : undefined;
    }).catch(async () => workflowLinks(page));
  };

  const byStatus = await list('ClawgateStatus="awaiting_approval"');
  assert.equal(byStatus.length, 1, `one job waits for approval: ${byStatus.join(', ')}`);
  const byJobId = await list(`ClawgateJobId="${jobId}"`);
  assert.deepEqual(byJobId, byStatus, 'the job id finds the same job');
  await page.screenshot({ path: join(outputDir, 'list.png') });
  assert.deepEqual(await list('ClawgateJobId="jnosuchjob"'), [], 'a job id of no job finds nothing');

  // The job's page: its input and its current details, through the codec server.
  await page.goto(byStatus[0] as string, { waitUntil: 'domcontentloaded' });
  const input = await until('the decrypted input on the job page', 30_000, async () => {
    const text = await pageText(page);
    return text.includes(`"text": "${REQUEST}"`) ? text : undefined;
  });
  assert.ok(!input.includes('binary/encrypted'), 'no payload is shown encrypted');
  const status = await page.$('[data-testid=data-encoder-status-success]');
  assert.ok(status, 'the UI says its codec server answers');
  assert.ok(await clickText(page, 'User Metadata'), 'the job page has its User Metadata tab');
  const details = await until('the current details on the job page', 30_000, async () => {
    const text = await pageText(page);
    return /awaiting_approval · room .* · requested by @demo-requester:/.test(text) ? text : undefined;
  });
  assert.match(details, /plan [0-9a-f]{12} · turns 0 · tool calls 0/);
  writeFileSync(join(outputDir, 'job-page.txt'), details);
  await page.screenshot({ path: join(outputDir, 'job-page.png'), fullPage: true });

  // Cancelled from the UI's own button and its confirmation.
  assert.ok(await clickText(page, 'Request Cancellation'), 'the job page has its cancel button');
  const confirmed = await until('the confirmation dialog', 10_000, () =>
    page.evaluate(() => {
      const button = [...document.querySelectorAll<HTMLElement>('[data-testid=confirm-modal-button]')].find(
        (e) => e.offsetParent !== null,
      );
      button?.click();
      return button ? true : undefined;
    }),
  );
  assert.ok(confirmed);
  const shown = await until('the job cancelled', 60_000, async () => {
    const { stdout } = await clawgate('jobs', 'show', jobId);
    return /outcome\s+cancelled/.test(stdout) ? stdout : undefined;
  });
  const digest = /bundle\s+([0-9a-f]{64})/.exec(shown)?.[1];
  assert.ok(digest, `the cancelled job has its bundle:\n${shown}`);
  const bundle = join(state, 'bundles', `${digest}.json`);
  const verified = await clawgate('verify', bundle);
  assert.equal(verified.code, 0, `${verified.stdout}${verified.stderr}`);
  await page.screenshot({ path: join(outputDir, 'cancelled.png') });

  child.kill('SIGINT');
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  assert.equal(code, 0, `clawgate start stopped with ${code}:\n${stackOutput}`);
});
