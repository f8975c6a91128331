// `clawgate config sample`: a commented configuration that matches the schema (a test parses
// it). Every key is optional; the values shown are the defaults unless marked "example".
export const SAMPLE_CONFIG = `# clawgate configuration (YAML or JSON). Every key is optional: with no file at all,
# \`clawgate start\` runs everything locally on embedded defaults. Environment variables
# override the file: CLAWGATE_STATE_DIR, CLAWGATE_TEMPORAL_ADDRESS, CLAWGATE_TEMPORAL_NAMESPACE,
# CLAWGATE_TEMPORAL_TLS, CLAWGATE_TEMPORAL_PORT, CLAWGATE_TEMPORAL_UI_PORT, CLAWGATE_HOMESERVER_URL,
# CLAWGATE_SYNAPSE_PORT, CLAWGATE_PROXY_PORT, CLAWGATE_HEALTH_PORT, CLAWGATE_WORKER_HEALTH_PORT,
# CLAWGATE_CODEC_PORT, CLAWGATE_CODEC_UI_ORIGIN, CLAWGATE_PAYLOAD_KEYS_DIR, CLAWGATE_LOG_LEVEL, and
# CLAWGATE_MODEL_BASE_URL + CLAWGATE_MODEL (+ CLAWGATE_MODEL_API_KEY, CLAWGATE_MODEL_UPSTREAM:
# its name, env by default) for one model upstream;
# secrets by name: CLAWGATE_ACCOUNT_<ID>_PASSWORD or _ACCESS_TOKEN, _RECOVERY_KEY,
# CLAWGATE_UPSTREAM_<NAME>_API_KEY.
# Relative paths are resolved against this file's folder. Run \`clawgate security audit\`
# after every change.

# Keys, policy registry, bundles, receipts, gateway state, embedded servers' data.
stateDir: state

temporal:
  # An existing Temporal frontend; leave it out to run an embedded dev server.
  # address: temporal.internal:7233          # example
  namespace: default
  tls: false                                # required when the address is not on loopback
  port: 7233                                # embedded dev server: gRPC
  uiPort: 8233                              # embedded dev server: Web UI
  taskQueue: clawgate-jobs
  # Revocations and policy changes made on other machines arrive through Temporal. When they
  # cannot be read for this long, every token check refuses (REVOCATION_CHECK_FAILED) until they
  # can; null keeps checking with what this state folder holds.
  controlStaleAfterSeconds: 30

matrix:
  # An existing homeserver; leave it out to run an embedded Synapse with a demo room and users.
  # homeserverUrl: https://matrix.example.org  # example
  port: 8008                                # embedded Synapse

policy:
  channel: matrix
  # A policy to sign, register and activate when the channel has none active yet.
  # initial: policies/ops.json                # example
  # registryDir: state/policy-registry        # default

proxy:
  listen: { host: 127.0.0.1, port: 8787 }   # keep on loopback unless behind TLS
  maxBodyBytes: 1048576
  upstreamTimeoutMs: 120000
  # OpenAI-compatible upstreams; leave them out to use the local demo upstream (it echoes).
  # Provider keys live here and nowhere else.
  # upstreams:                              # example
  #   - name: openrouter
  #     baseUrl: https://openrouter.ai/api/v1
  #     apiKey: sk-or-...
  #     models: [anthropic/claude-sonnet-4]
  #   - name: internal-vllm                 # behind your own CA: its certificate must chain to
  #     baseUrl: https://vllm.internal:8000/v1
  #     caFile: internal-ca.pem             # these CAs (PEM), not the system's
  #     models: [qwen2.5-coder]

worker:
  health: { host: 127.0.0.1, port: 8791 }  # the worker (clawgate worker or start): GET /health, /metrics
  maxCachedWorkflows: 50                    # more waiting jobs are evicted and replayed on a signal
  # planningModel: anthropic/claude-sonnet-4  # default: the first model of the first upstream
  # workspace: /srv/repo                      # default: state/workspace
  sandbox:
    backend: bubblewrap                     # or docker; there is no mode without a sandbox
    # bwrap: /usr/bin/bwrap                 # default: the one the bootstrap found

gateway:
  health: { host: 127.0.0.1, port: 8790 }
  # Bot accounts; required with an existing homeserver.
  # accounts:                               # example
  #   - id: ops
  #     homeserverUrl: https://matrix.example.org
  #     userId: "@clawgate:example.org"
  #     password: change-me                 # or accessToken; logged in once, the token is kept
  #     rooms: ["!ops:example.org"]
  #     encryption: true                    # the default: reads and writes end-to-end encrypted
  #                                         # rooms (Rust crypto); false only for plain rooms
  #     recoveryKey: "EsT…"                 # key backup on the server; better by env var

evidence:
  listen: { host: 127.0.0.1, port: 8792 }  # the evidence pages: GET /bundles/<digest>
  # baseUrl: https://evidence.example.org   # default: http://<listen host>:<listen port>

codec:
  # Temporal payloads are encrypted (AES-256-GCM) with the payload keyring; the codec server
  # lets the Temporal Web UI show them decrypted, to that UI's origin only.
  listen: { host: 127.0.0.1, port: 8793 }  # keep on loopback
  # uiOrigin: https://temporal-ui.example.org  # default: the embedded Web UI's origin
  # keysDir: state/keys                     # default; its payload/ keyring is shared by every process

supervisor:
  # clawgate start: a part that runs but gives no answer at all to its health check this long
  # (hung) is killed and restarted; an answer saying why it is not healthy is no hang.
  hungAfterSeconds: 60                      # 5 to 3600

log:
  level: info
`;
