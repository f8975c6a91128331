// The commands that run clawgate or talk to a running one: start, worker, proxy, gateway,
// codec-server, jobs, say, config sample, security audit. Heavy modules load inside the actions,
// so `--help` and the offline commands stay quick.
import { existsSync, mkdirSync, openSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Command } from 'commander';
import type { Logger } from 'pino';
import type { MetricsBuffer } from '@temporalio/worker';
import { ClawgateError, ERROR_CODES } from '../errors.ts';

const out = (text: string): void => void process.stdout.write(`${text}\n`);
const configOption = '--config <file>';
const configHelp = 'configuration file (default: $CLAWGATE_CONFIG, or ./clawgate.yaml if present)';

/**
 * Resolves on SIGINT, SIGTERM or SIGHUP; for a part `clawgate start` runs (CLAWGATE_SUPERVISOR_PID), also
 * when that process is gone (killed), so that no part outlives it.
 */
function untilStopped(logger?: Logger): Promise<void> {
  return new Promise((resolve) => {
    const stop = (signal: string): void => {
      logger?.info({ signal }, 'stopping');
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    // The terminal closed: the same clean stop (its default would end this process at once).
    process.once('SIGHUP', () => stop('SIGHUP'));
    const supervisor = Number(process.env['CLAWGATE_SUPERVISOR_PID'] ?? '');
    if (Number.isInteger(supervisor) && supervisor > 0) {
      const watch = setInterval(() => {
        if (process.ppid === supervisor) return;
        clearInterval(watch);
        stop('clawgate start is gone');
      }, 1000);
      watch.unref();
    }
  });
}

/** matrix-js-sdk can leave timers behind; they must not keep a stopped process alive. */
function exitSoon(): void {
  setTimeout(() => process.exit(), 1000).unref();
}

/** A --port option's value, or undefined when it was not given. */
function portOption(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65_535) {
    throw new ClawgateError(ERROR_CODES.usage, `--port ${value}: not a TCP port (0 to 65535)`);
  }
  return port;
}

async function load(configPath: string | undefined) {
  const { loadConfig } = await import('../config/config.ts');
  return loadConfig(configPath);
}

async function serviceLogger(name: string, level: string, opts: { metricsBuffer?: MetricsBuffer } = {}) {
  const { createLogger, installTemporalLogging } = await import('../stack/logging.ts');
  const logger = createLogger(name, level);
  installTemporalLogging(logger, opts);
  return logger;
}

export function addStackCommands(program: Command): void {
  program
    .command('start')
    .description(
      'run the whole stack, each part a supervised process: Temporal, Synapse with a demo room, proxy, worker, gateway (Ctrl-C stops)',
    )
    .option(configOption, configHelp)
    .action(async (opts: { config?: string }) => {
      const config = await load(opts.config);
      const logPath = join(config.stateDir, 'clawgate.log');
      mkdirSync(dirname(logPath), { recursive: true, mode: 0o700 });
      const { pino } = await import('pino');
      const { createLogger } = await import('../stack/logging.ts');
      const logger = createLogger(
        'clawgate',
        config.log.level,
        pino.destination({ dest: openSync(logPath, 'a', 0o600), sync: true }),
      );
      const { startStack, tryItLines } = await import('../stack/start.ts');
      const started = Date.now();
      // A Ctrl-C while the parts start stops those started.
      const abort = new AbortController();
      const stopping = untilStopped(logger).then(() => abort.abort());
      let stack: Awaited<ReturnType<typeof startStack>>;
      try {
        stack = await startStack(config, logger, (line) => out(`==> ${line}`), {
          ...(opts.config ? { configPath: opts.config } : {}),
          signal: abort.signal,
        });
      } catch (error) {
        if (!abort.signal.aborted) throw error;
        out('stopped before it was ready');
        exitSoon();
        return;
      }
      out(
        [
          '',
          `clawgate is ready (${((Date.now() - started) / 1000).toFixed(1)} s):`,
          ...stack.lines.map((l) => `  ${l}`),
          `  Logs             ${logPath}`,
          '',
          ...tryItLines(stack.demo),
          '',
          'Ctrl-C stops everything; jobs, rooms and evidence are kept for the next start.',
        ].join('\n'),
      );
      // Until Ctrl-C, or a part that keeps failing (the error names it and its log).
      const failure = await Promise.race([
        stopping.then(() => null),
        stack.failed.catch((e: unknown) => (e instanceof Error ? e : new Error(String(e)))),
      ]);
      out('stopping...');
      await stack.stop();
      if (failure) throw failure;
      out('stopped');
      exitSoon();
    });

  program
    .command('status')
    .description(
      "every part's state from its health endpoint (Temporal, Synapse, proxy, worker, gateway, codec, evidence); exit 1 when one is down",
    )
    .option(configOption, configHelp)
    .action(async (opts: { config?: string }) => {
      const config = await load(opts.config);
      const { partStatuses, renderStatus } = await import('./status.ts');
      const rows = await partStatuses(config);
      out(renderStatus(rows));
      const down = rows.filter((r) => !r.up).map((r) => r.part);
      if (down.length > 0) {
        throw new ClawgateError(ERROR_CODES.partDown, `down: ${down.join(', ')}`);
      }
    });

  program
    .command('demo-upstream', { hidden: true })
    .description("the local demo model upstream alone (it echoes; it is not a model): clawgate start's part")
    .option('--port <port>', 'listen port on 127.0.0.1 (default: one the system picks)')
    .action(async (opts: { port?: string }) => {
      const port = portOption(opts.port);
      const { createLogger } = await import('../stack/logging.ts');
      const logger = createLogger('clawgate-demo-upstream', 'info');
      const { startDemoModelUpstream } = await import('../stack/components.ts');
      const upstream = await startDemoModelUpstream(port === undefined ? {} : { port });
      logger.info({ url: upstream.url }, 'demo upstream listening (it echoes; it is not a model)');
      await untilStopped(logger);
      await upstream.close();
      exitSoon();
    });

  program
    .command('proxy')
    .description('run the receipting model proxy alone (JSON logs on stdout)')
    .option(configOption, configHelp)
    .action(async (opts: { config?: string }) => {
      const config = await load(opts.config);
      const logger = await serviceLogger('clawgate-proxy', config.log.level);
      const { ensureKeys, modelUpstreams, runControlMirror, runProxy } =
        await import('../stack/components.ts');
      await ensureKeys(config);
      // Revocations and policy changes made on other machines reach this proxy through Temporal.
      const mirror = config.temporal.address
        ? runControlMirror(config, config.temporal.address, logger)
        : undefined;
      if (!mirror) {
        logger.warn(
          'no temporal.address: only revocations and policy changes made in this state folder reach this proxy',
        );
      }
      const upstream = await modelUpstreams(config);
      if (upstream.demo)
        logger.warn(
          { url: upstream.demo.url },
          'no upstream configured: the local DEMO upstream (not a model)',
        );
      const proxy = await runProxy(config, upstream.upstreams, logger, {
        health: () => ({ control: mirror ? mirror.health() : 'not shared: no temporal.address' }),
        stale: mirror?.stale,
      });
      await untilStopped(logger);
      await proxy.close();
      await upstream.demo?.close();
      await mirror?.close();
      exitSoon();
    });

  program
    .command('worker')
    .description('run the worker alone: job workflows and their activities (JSON logs on stdout)')
    .option(configOption, configHelp)
    .option('--proxy-url <url>', 'the model proxy (default: proxy.listen from the configuration)')
    .action(async (opts: { config?: string; proxyUrl?: string }) => {
      const config = await load(opts.config);
      // The Temporal SDK's metrics go to a buffer that GET /metrics drains (src/metrics/temporal.ts).
      const { MetricsBuffer } = await import('@temporalio/worker');
      const metricsBuffer = new MetricsBuffer({ maxBufferSize: 100_000, useSecondsForDurations: true });
      const logger = await serviceLogger('clawgate-worker', config.log.level, { metricsBuffer });
      const { DEMO_MODEL, ensureKeys, requireAddress, runControlMirror, runWorker, serveWorkerHealth } =
        await import('../stack/components.ts');
      const { WorkerMetrics } = await import('../metrics/worker.ts');
      const { Outage } = await import('../stack/outages.ts');
      const { forwardTemporalMetrics } = await import('../metrics/temporal.ts');
      const metrics = new WorkerMetrics();
      const sdkMetrics = forwardTemporalMetrics(metricsBuffer, metrics.registry);
      await ensureKeys(config);
      const address = requireAddress(config, 'clawgate worker');
      const mirror = runControlMirror(config, address, logger);
      // Health first: a worker started while Temporal is away says so (503) as it waits for it.
      const waiting = new Outage({
        service: 'Temporal',
        log: logger.child({ address }),
        impact: 'the worker starts once it answers',
      });
      let worker: Awaited<ReturnType<typeof runWorker>> | null = null;
      let health: Awaited<ReturnType<typeof serveWorkerHealth>>;
      try {
        health = await serveWorkerHealth(config, {
          worker: () => worker,
          waiting,
          mirror,
          metrics,
          drain: sdkMetrics.drain,
        });
      } catch (error) {
        await mirror.close();
        throw error;
      }
      worker = await runWorker(config, {
        address,
        proxyUrl: opts.proxyUrl ?? `http://${config.proxy.listen.host}:${config.proxy.listen.port}`,
        planningModel: config.worker.planningModel ?? config.proxy.upstreams?.[0]?.models[0] ?? DEMO_MODEL,
        logger,
        controlStale: mirror.stale,
        metrics,
        waiting,
      });
      await Promise.race([untilStopped(logger), worker.run]);
      await health.close();
      sdkMetrics.stop();
      await worker.close();
      await mirror.close();
      exitSoon();
    });

  program
    .command('gateway')
    .description(
      'run the Matrix gateway alone: bot accounts that start jobs and carry approvals (JSON logs on stdout)',
    )
    .option(configOption, configHelp)
    .action(async (opts: { config?: string }) => {
      const config = await load(opts.config);
      const logger = await serviceLogger('clawgate-gateway', config.log.level);
      const { requireAddress, runGateway } = await import('../stack/components.ts');
      const { demoAccount, readDemo } = await import('../stack/demo.ts');
      const demo = readDemo(config);
      const accounts = config.gateway.accounts ?? (demo ? [demoAccount(demo)] : undefined);
      if (!accounts) {
        throw new ClawgateError(
          ERROR_CODES.configInvalid,
          'gateway.accounts: at least one bot account is required',
        );
      }
      const fault = process.env['CLAWGATE_GATEWAY_FAULT'];
      const gateway = await runGateway(config, {
        address: requireAddress(config, 'clawgate gateway'),
        accounts,
        logger,
        ...(fault ? { fault } : {}),
      });
      await untilStopped(logger);
      await gateway.stop();
      logger.info('stopped');
      exitSoon();
    });

  program
    .command('codec-server')
    .description(
      "run the codec server alone: the Temporal Web UI's remote codec, decrypting payloads for its origin only",
    )
    .option(configOption, configHelp)
    .option('--host <host>', 'listen address (default: codec.listen.host)')
    .option('--port <port>', 'listen port (default: codec.listen.port)')
    .option('--ui-origin <origin>', 'the Web UI origin answered (default: codec.uiOrigin)')
    .action(async (opts: { config?: string; host?: string; port?: string; uiOrigin?: string }) => {
      const config = await load(opts.config);
      const port = portOption(opts.port);
      let uiOrigin: string | undefined;
      if (opts.uiOrigin !== undefined) {
        try {
          uiOrigin = new URL(opts.uiOrigin).origin;
        } catch {
          throw new ClawgateError(ERROR_CODES.usage, `--ui-origin ${opts.uiOrigin}: not a URL`);
        }
      }
      const logger = await serviceLogger('clawgate-codec', config.log.level);
      const { runCodecServer } = await import('../stack/components.ts');
      const { statePaths } = await import('../config/config.ts');
      const server = await runCodecServer(config, logger, {
        ...(opts.host ? { host: opts.host } : {}),
        ...(port !== undefined ? { port } : {}),
        ...(uiOrigin ? { uiOrigin } : {}),
      });
      logger.info(
        { url: server.url, tokenFile: statePaths(config).codecToken },
        'give the Web UI this endpoint (--ui-codec-endpoint); other callers send the token file as a bearer token',
      );
      await untilStopped(logger);
      await server.close();
      exitSoon();
    });

  const jobs = program.command('jobs').description("clawgate's jobs, from Temporal's visibility");
  jobs
    .command('list')
    .description('the latest jobs: short id, status, room, requester, start time')
    .option(configOption, configHelp)
    .option('--status <status>', 'only jobs in this status (for example awaiting_approval)')
    .option('--limit <n>', 'at most this many', '20')
    .action(async (opts: { config?: string; status?: string; limit: string }) => {
      const config = await load(opts.config);
      const { listJobs } = await import('./jobs.ts');
      const rows = await listJobs(config, { status: opts.status, limit: Number(opts.limit) });
      if (rows.length === 0) out('no jobs');
      for (const r of rows)
        out(`${r.jobId}  ${r.status.padEnd(17)}  ${r.startedAt}  ${r.requester}  ${r.roomId}`);
    });
  jobs
    .command('show <job>')
    .description('one job by short id or workflow id: status, approvals, steps, outcome, bundle')
    .option(configOption, configHelp)
    .action(async (job: string, opts: { config?: string }) => {
      const config = await load(opts.config);
      const { showJob } = await import('./jobs.ts');
      out(await showJob(config, job));
    });

  program
    .command('say')
    .description('post a message as a demo user (requester or approver) of `clawgate start`')
    .requiredOption('--as <user>', 'requester or approver')
    .option('--thread <event-id>', "post in this event's thread")
    .option(
      '--follow',
      "then print the thread's messages as they come, decrypted (plan, cards, status, answer), until the job ends (Ctrl-C stops)",
    )
    .option(configOption, configHelp)
    .argument('<room>', 'a room id, or "demo" for the demo room')
    .argument('<text...>', 'the message')
    .action(
      async (
        room: string,
        words: string[],
        opts: { as: string; thread?: string; follow?: boolean; config?: string },
      ) => {
        const config = await load(opts.config);
        const { say } = await import('./jobs.ts');
        const follow = opts.follow ? { print: out, stopped: untilStopped() } : undefined;
        out(await say(config, { as: opts.as, room, text: words.join(' '), thread: opts.thread, follow }));
        exitSoon();
      },
    );

  const configCommand = program.command('config').description('the configuration file');
  configCommand
    .command('sample')
    .description('print a commented sample configuration that matches the schema')
    .action(async () => {
      const { SAMPLE_CONFIG } = await import('../config/sample.ts');
      process.stdout.write(SAMPLE_CONFIG);
    });
  configCommand
    .command('check')
    .description('validate the configuration (file and environment) and print it resolved')
    .option(configOption, configHelp)
    .action(async (opts: { config?: string }) => {
      const config = await load(opts.config);
      out(
        JSON.stringify(
          config,
          (k, v: unknown) => (/apiKey|password|accessToken/.test(k) ? '[secret]' : v),
          2,
        ),
      );
    });

  program
    .command('security')
    .description('security checks')
    .command('audit')
    .description(
      'check file modes, secrets, sandbox, allowlists, pinning, listeners, TLS and room encryption (notes, asked of the homeserver); exit 1 on a high finding',
    )
    .option(configOption, configHelp)
    .option('--fix', 'tighten file modes (keys 0600, state folders 0700)')
    .action(async (opts: { config?: string; fix?: boolean }) => {
      const config = await load(opts.config);
      const { applyModeFixes, audit, renderFindings, sortFindings } = await import('../config/audit.ts');
      const { auditEncryption } = await import('../config/audit-encryption.ts');
      const configFile =
        opts.config ??
        process.env['CLAWGATE_CONFIG'] ??
        (existsSync('clawgate.yaml') ? 'clawgate.yaml' : undefined);
      let findings = audit(config, configFile ? { configFile } : {});
      if (opts.fix) {
        for (const line of applyModeFixes(findings)) out(`fixed: ${line}`);
        findings = audit(config, configFile ? { configFile } : {});
      }
      findings = sortFindings([...findings, ...(await auditEncryption(config))]);
      out(renderFindings(findings));
      const high = findings.filter((f) => f.severity === 'high').length;
      if (high > 0) throw new ClawgateError(ERROR_CODES.auditFailed, `${high} high finding(s)`);
    });
}
