# Shared by scripts/bootstrap and scripts/node: where clawgate keeps the tools it installs.
# Sourced, not run.

# Pinned versions. Change them here only; the bootstrap step installs exactly these.
CLAWGATE_NODE_VERSION=24.21.0
CLAWGATE_NODE_MIN_MAJOR=22
CLAWGATE_TEMPORAL_CLI_VERSION=v1.5.1
CLAWGATE_SYNAPSE_VERSION=1.163.2

# The cache folder survives between runs and is shared by every checkout on this machine, so a
# warm machine does not rebuild the Temporal CLI or reinstall Synapse.
clawgate_cache_dir() {
  printf '%s\n' "${CLAWGATE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/clawgate}"
}

clawgate_node_arch() {
  case "$(uname -m)" in
    x86_64 | amd64) echo x64 ;;
    aarch64 | arm64) echo arm64 ;;
    *) uname -m ;;
  esac
}

# The Node.js binary the project runs on: the machine's own when new enough, else the cached one.
clawgate_node_bin() {
  local major
  if command -v node >/dev/null 2>&1; then
    major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
    if [ "$major" -ge "$CLAWGATE_NODE_MIN_MAJOR" ]; then
      command -v node
      return 0
    fi
  fi
  local cached
  cached="$(clawgate_cache_dir)/node-v$CLAWGATE_NODE_VERSION/node_modules/node-linux-$(clawgate_node_arch)/bin/node"
  if [ -x "$cached" ]; then
    printf '%s\n' "$cached"
    return 0
  fi
  return 1
}
