#!/usr/bin/env bash
# The real tools the chart and integration tests run, built once from their
# Go modules into $VIGIL_CACHE/bin, keyed by version:
#
#   tools.sh build [helm|argo-health]   build what is missing (all by default)
#   tools.sh path TOOL                  print the binary's path
#
# Helm v4 from helm.sh/helm/v4 (Apache-2.0), pinned in tools/helm/go.mod.
# argo-health: Argo CD's own health-script evaluator (argo-cd/v3 util/lua,
# Apache-2.0; v3.2.12 is the newest that builds with Go 1.26), tools/argo-health.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HELM_VERSION="v4.3.1"
HELM="$VIGIL_CACHE/bin/helm-$HELM_VERSION"
ARGO_VERSION="v3.2.12"
ARGO_HEALTH="$VIGIL_CACHE/bin/argo-health-$ARGO_VERSION"
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

case "${1:-}" in
  build)
    case "${2:-all}" in
      helm) build_helm ;;
      argo-health) build_argo_health ;;
      all) build_helm; build_argo_health ;;
      *) die "unknown tool ${2}" ;;
    esac ;;
  path)
    case "${2:-}" in
      helm) echo "$HELM" ;;
      argo-health) echo "$ARGO_HEALTH" ;;
      *) die "unknown tool ${2:-}" ;;
    esac ;;
  *) echo "usage: $0 build [helm|argo-health]|path TOOL" >&2; exit 2 ;;
esac
