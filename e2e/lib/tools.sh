#!/usr/bin/env bash
# The real tools the chart and integration tests run, built once from their
# Go modules into $VIGIL_CACHE/bin, keyed by version:
#
#   tools.sh build [helm|argo-health|prometheus|dashlint|logql]   build what is missing (all by default)
#   tools.sh path TOOL                  print the binary's path
#
# Helm v4 from helm.sh/helm/v4 (Apache-2.0), pinned in tools/helm/go.mod.
# argo-health: Argo CD's own health-script evaluator (argo-cd/v3 util/lua,
# Apache-2.0; v3.2.12 is the newest that builds with Go 1.26), tools/argo-health.
# prometheus, promtool: Prometheus 3.16.0 (module v0.316.0, -tags
# remove_all_sd: no cloud service discovery), tools/prometheus.
# dashlint: strict dashboard validation with grafana-foundation-sdk v0.0.22
# (Apache-2.0), tools/dashlint. logql: Grafana's LogQL grammar, npm
# @grafana/lezer-logql 0.4.2 (Apache-2.0), tools/logql. Grafana and Loki
# themselves are AGPL and never used.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HELM_VERSION="v4.3.1"
HELM="$VIGIL_CACHE/bin/helm-$HELM_VERSION"
ARGO_VERSION="v3.2.12"
ARGO_HEALTH="$VIGIL_CACHE/bin/argo-health-$ARGO_VERSION"
PROM_VERSION="v0.316.0"
PROM_DIR="$VIGIL_CACHE/bin/prometheus-$PROM_VERSION"
DASHLINT="$VIGIL_CACHE/bin/dashlint-v0.0.22"
LOGQL_DIR="$VIGIL_CACHE/logql-0.4.2"
export GOFLAGS="${GOFLAGS:--mod=mod}"

build_helm() {
  [[ -x $HELM ]] && return
  command -v go >/dev/null || die "go is needed to build helm"
  log "building helm $HELM_VERSION from helm.sh/helm/v4 (first time only)"
  (cd "$E2E_DIR/tools/helm" && go build -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    -o "$HELM.tmp" helm.sh/helm/v4/cmd/helm) && mv "$HELM.tmp" "$HELM"
}

build_argo_health() {
  [[ -x $ARGO_HEALTH ]] && return
  command -v go >/dev/null || die "go is needed to build argo-health"
  log "building argo-health (Argo CD $ARGO_VERSION's Lua evaluator; first time only)"
  (cd "$E2E_DIR/tools/argo-health" && go build -trimpath -ldflags "-s -w" -o "$ARGO_HEALTH.tmp" .) \
    && mv "$ARGO_HEALTH.tmp" "$ARGO_HEALTH"
}

build_prometheus() {
  [[ -x $PROM_DIR/prometheus && -x $PROM_DIR/promtool ]] && return
  log "building prometheus and promtool $PROM_VERSION (first time only)"
  mkdir -p "$PROM_DIR.tmp"
  (cd "$E2E_DIR/tools/prometheus" && go build -trimpath -tags remove_all_sd \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=3.16.0" -o "$PROM_DIR.tmp/" \
    github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool) \
    && rm -rf "$PROM_DIR" && mv "$PROM_DIR.tmp" "$PROM_DIR"
}

build_dashlint() {
  [[ -x $DASHLINT ]] && return
  log "building dashlint (grafana-foundation-sdk; first time only)"
  (cd "$E2E_DIR/tools/dashlint" && go build -trimpath -ldflags "-s -w" -o "$DASHLINT.tmp" .) && mv "$DASHLINT.tmp" "$DASHLINT"
}

build_logql() {
  [[ -f $LOGQL_DIR/node_modules/@grafana/lezer-logql/package.json ]] && return
  command -v npm >/dev/null || die "npm is needed for the LogQL grammar"
  log "installing @grafana/lezer-logql 0.4.2 from npm (first time only)"
  mkdir -p "$LOGQL_DIR"
  cp "$E2E_DIR/tools/logql/check.mjs" "$LOGQL_DIR/"
  (cd "$LOGQL_DIR" && echo '{"private": true, "type": "module"}' > package.json \
    && npm install --no-audit --no-fund --silent @grafana/lezer-logql@0.4.2 >/dev/null)
}

case "${1:-}" in
  build)
    case "${2:-all}" in
      helm) build_helm ;;
      argo-health) build_argo_health ;;
      prometheus) build_prometheus ;;
      dashlint) build_dashlint ;;
      logql) build_logql ;;
      all) build_helm; build_argo_health; build_prometheus; build_dashlint; build_logql ;;
      *) die "unknown tool ${2}" ;;
    esac ;;
  path)
    case "${2:-}" in
      helm) echo "$HELM" ;;
      argo-health) echo "$ARGO_HEALTH" ;;
      prometheus) echo "$PROM_DIR/prometheus" ;;
      promtool) echo "$PROM_DIR/promtool" ;;
      dashlint) echo "$DASHLINT" ;;
      logql) echo "$LOGQL_DIR/check.mjs" ;;
      *) die "unknown tool ${2:-}" ;;
    esac ;;
  *) echo "usage: $0 build [helm|argo-health]|path TOOL" >&2; exit 2 ;;
esac
