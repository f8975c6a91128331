# clawgate's image for the docker-compose services (proxy, worker, gateway): the project on
# Node.js 24 with bubblewrap for the sandbox. `docker compose build` makes it.
FROM node:24-bookworm-slim
RUN apt-get update \
  && apt-get install -y --no-install-recommends bubblewrap ca-certificates \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY bin ./bin
COPY scripts ./scripts
COPY src ./src
COPY examples ./examples
ENV CLAWGATE_STATE_DIR=/var/lib/clawgate
ENTRYPOINT ["bin/clawgate"]
