#!/usr/bin/env bash
# Apache Kafka for tests: the official broker from Maven Central, one combined
# broker+controller node in KRaft mode, listening on 127.0.0.1 only.
#
#   kafka.sh install   resolve the broker jars into $VIGIL_CACHE (idempotent)
#   kafka.sh start     format storage once, start, wait until it serves metadata
#   kafka.sh stop      stop cleanly (SIGTERM, then SIGKILL after 30 s)
#   kafka.sh restart   stop and start on the same port with the same data
#   kafka.sh wipe      stop and delete its data
#
# The port is VIGIL_KAFKA_PORT if given, else a free one, kept across restarts.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LIBS="$VIGIL_CACHE/kafka-$KAFKA_VERSION/libs"
DIR="$VIGIL_STATE/kafka"
PIDFILE="$DIR/kafka.pid"

install() {
  if [[ -f $LIBS/.complete ]]; then return; fi
  command -v mvn >/dev/null || die "mvn (Maven) is needed to resolve Kafka"
  log "resolving Apache Kafka $KAFKA_VERSION from Maven Central"
  rm -rf "$LIBS"
  mvn -q -B -f "$E2E_DIR/tools/kafka/pom.xml" dependency:copy-dependencies \
    -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime -DoutputDirectory="$LIBS"
  touch "$LIBS/.complete"
}

JAVA_ARGS=(-Xms256m -Xmx"${VIGIL_KAFKA_HEAP:-768m}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
  -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$DIR/log4j2.properties"
  -Dkafka.logs.dir="$DIR/logs"
  -cp "$LIBS/*")
java_cmd() { java "${JAVA_ARGS[@]}" "$@"; }

configure() {
  mkdir -p "$DIR/data" "$DIR/logs"
  local port cport
  port=$(cat "$DIR/port" 2>/dev/null || echo "${VIGIL_KAFKA_PORT:-$(free_port)}")
  cport=$(cat "$DIR/controller-port" 2>/dev/null || echo "${VIGIL_KAFKA_CONTROLLER_PORT:-$(free_port)}")
  echo "$port" > "$DIR/port"
  echo "$cport" > "$DIR/controller-port"
  # Node mode: a second listener on the node IP, advertised there, for pods.
  local pods="" pods_map=""
  # Kept across restarts while a node runs (broker-outage tests restart it).
  [[ -z ${VIGIL_NODE_IP:-} && -f $VIGIL_STATE/node/ip ]] && VIGIL_NODE_IP=$(cat "$VIGIL_STATE/node/ip")
  if [[ -n ${VIGIL_NODE_IP:-} ]]; then
    local pport; pport=$(cat "$DIR/pod-port" 2>/dev/null || free_port)
    echo "$pport" > "$DIR/pod-port"
    pods=",PODS://$VIGIL_NODE_IP:$pport"; pods_map=",PODS:PLAINTEXT"
  fi
  cat > "$DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport$pods
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport$pods
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT$pods_map
inter.broker.listener.name=PLAINTEXT
log.dirs=$DIR/data
# Tests create every topic they use; a typo must fail, not create a topic.
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Small segments so retention and compaction tests see rolled segments.
log.segment.bytes=16777216
log.retention.check.interval.ms=10000
delete.topic.enable=true
PROPS
  cat > "$DIR/log4j2.properties" <<'PROPS'
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
logger.state.name = state.change.logger
logger.state.level = warn
PROPS
}

format_storage() {
  if [[ -f $DIR/data/meta.properties ]]; then return; fi
  local id
  id=$(java_cmd kafka.tools.StorageTool random-uuid | tail -n 1)
  log "formatting KRaft storage (cluster $id)"
  java_cmd kafka.tools.StorageTool format --standalone \
    -t "$id" -c "$DIR/server.properties" > "$DIR/logs/format.log" 2>&1 \
    || { cat "$DIR/logs/format.log" >&2; die "Kafka storage format failed"; }
}

start() {
  install
  if pid_alive "$PIDFILE" && [[ -n ${VIGIL_NODE_IP:-} ]] && ! grep -q "PODS://" "$DIR/server.properties"; then
    log "restarting Kafka with a listener for pods on $VIGIL_NODE_IP"
    stop
  fi
  if pid_alive "$PIDFILE"; then
    log "Kafka already running on 127.0.0.1:$(cat "$DIR/port")"
    return
  fi
  configure
  format_storage
  local port; port=$(cat "$DIR/port")
  log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$port"
  # Readiness is read from this run's log only.
  [[ -f $DIR/logs/server.log ]] && mv "$DIR/logs/server.log" "$DIR/logs/server.log.prev"
  nohup java "${JAVA_ARGS[@]}" kafka.Kafka "$DIR/server.properties" \
    > "$DIR/logs/stdout.log" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  # The broker is usable once it serves metadata, not merely when the port is
  # open: ask it with the bundled admin client.
  if ! wait_for 120 "Kafka" ready "$port"; then
    pid_alive "$PIDFILE" || log "Kafka exited: $(tail -n 5 "$DIR/logs/stdout.log")"
    tail -n 40 "$DIR/logs/server.log" >&2 || true
    die "Kafka did not become ready within 120 s (logs: $DIR/logs)"
  fi
  set_env VIGIL_KAFKA_BOOTSTRAP "127.0.0.1:$port"
}

ready() {
  port_open "$1" && grep -q "Kafka Server started" "$DIR/logs/server.log" 2>/dev/null
}

stop() { stop_pid "$PIDFILE" Kafka; }

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  wipe) stop; rm -rf "$DIR" ;;
  bootstrap) echo "127.0.0.1:$(cat "$DIR/port")" ;;
  *) echo "usage: $0 install|start|stop|restart|wipe|bootstrap" >&2; exit 2 ;;
esac
