#!/usr/bin/env bash
# Apache Kafka for tests: the official broker from Maven Central, one combined
# broker+controller node in KRaft mode, listening on 127.0.0.1 only.
#
#   kafka.sh install   resolve the broker jars into $VIGIL_CACHE (idempotent)
#   kafka.sh start     format storage once, start, wait until it serves metadata
#   kafka.sh stop      stop cleanly (SIGTERM, then SIGKILL after 30 s)
#   kafka.sh restart   stop and start on the same port with the same data
#   kafka.sh wipe      stop and delete its data
#   kafka.sh admin ... SCRAM users and ACLs (e2e/tools/kafka/VigilKafkaAdmin.java)
#
# The port is VIGIL_KAFKA_PORT if given, else a free one, kept across restarts.
#
# Besides PLAINTEXT, the broker has a SASL_SSL listener (SCRAM-SHA-512 over
# TLS, with a CA and certificate the harness makes) for security tests, and
# ACLs on (StandardAuthorizer): the anonymous principal of the PLAINTEXT and
# controller listeners is a super user, so every other test is unaffected,
# while SCRAM users get exactly the ACLs a test grants them.
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

# tls_material SAN...: a CA and a broker certificate for these IP addresses,
# made once (again when the addresses change). The broker reads one PEM file
# with its key (PKCS#8) and certificate; clients trust ca.crt.
tls_material() {
  local tls="$DIR/tls" sans; sans=$(printf 'IP:%s,' "$@"); sans=${sans%,}
  if [[ -f $tls/server.pem && $(cat "$tls/sans" 2>/dev/null) == "$sans" ]]; then return; fi
  log "making TLS material for the broker ($sans)"
  rm -rf "$tls"; mkdir -p "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=vigil-test-ca" \
    -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=vigil-test-kafka" \
    -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$sans" > "$tls/ext.cnf"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 3650 -extfile "$tls/ext.cnf" -out "$tls/server.crt" 2>/dev/null
  { openssl pkcs8 -topk8 -nocrypt -in "$tls/server.key"; cat "$tls/server.crt"; } > "$tls/server.pem"
  chmod 0644 "$tls/ca.crt"
  echo "$sans" > "$tls/sans"
}

# A port kept in $DIR/NAME across restarts.
kept_port() {
  local p; p=$(cat "$DIR/$1" 2>/dev/null || free_port)
  echo "$p" > "$DIR/$1"; echo "$p"
}

configure() {
  mkdir -p "$DIR/data" "$DIR/logs"
  local port cport
  port=$(cat "$DIR/port" 2>/dev/null || echo "${VIGIL_KAFKA_PORT:-$(free_port)}")
  cport=$(cat "$DIR/controller-port" 2>/dev/null || echo "${VIGIL_KAFKA_CONTROLLER_PORT:-$(free_port)}")
  echo "$port" > "$DIR/port"
  echo "$cport" > "$DIR/controller-port"
  local sport; sport=$(kept_port secure-port)
  # Node mode: listeners on the node IP, advertised there, for pods.
  local pods="" pods_map="" ips=(127.0.0.1)
  # Kept across restarts while a node runs (broker-outage tests restart it).
  [[ -z ${VIGIL_NODE_IP:-} && -f $VIGIL_STATE/node/ip ]] && VIGIL_NODE_IP=$(cat "$VIGIL_STATE/node/ip")
  if [[ -n ${VIGIL_NODE_IP:-} ]]; then
    local pport psport; pport=$(kept_port pod-port); psport=$(kept_port pod-secure-port)
    pods=",PODS://$VIGIL_NODE_IP:$pport,PODS_SECURE://$VIGIL_NODE_IP:$psport"
    pods_map=",PODS:PLAINTEXT,PODS_SECURE:SASL_SSL"
    ips+=("$VIGIL_NODE_IP")
  fi
  tls_material "${ips[@]}"
  local scram='org.apache.kafka.common.security.scram.ScramLoginModule required;'
  cat > "$DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport,SECURE://127.0.0.1:$sport$pods
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport,SECURE://127.0.0.1:$sport$pods
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SECURE:SASL_SSL$pods_map
inter.broker.listener.name=PLAINTEXT
# Security tests: SCRAM over TLS, ACLs enforced for everyone but the
# anonymous principal of the PLAINTEXT and controller listeners.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.secure.scram-sha-512.sasl.jaas.config=$scram
listener.name.pods_secure.scram-sha-512.sasl.jaas.config=$scram
ssl.keystore.type=PEM
ssl.keystore.location=$DIR/tls/server.pem
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
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
  if pid_alive "$PIDFILE" && [[ -n ${VIGIL_NODE_IP:-} ]] && ! grep -q "PODS_SECURE://" "$DIR/server.properties"; then
    log "restarting Kafka with a listener for pods on $VIGIL_NODE_IP"
    stop
  elif pid_alive "$PIDFILE" && ! grep -q "SECURE://" "$DIR/server.properties"; then
    log "restarting Kafka with the SASL_SSL listener"
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
  set_env VIGIL_KAFKA_SECURE_BOOTSTRAP "127.0.0.1:$(cat "$DIR/secure-port")"
  set_env VIGIL_KAFKA_CA "$DIR/tls/ca.crt"
}

# admin COMMAND...: SCRAM users and ACLs (see VigilKafkaAdmin.java).
admin() {
  pid_alive "$PIDFILE" || die "Kafka is not running"
  local out
  # The client logs its whole configuration at INFO: shown only on failure.
  out=$(java -Xmx128m -cp "$LIBS/*" "$E2E_DIR/tools/kafka/VigilKafkaAdmin.java" \
    "127.0.0.1:$(cat "$DIR/port")" "$@" 2>&1) || { echo "$out" | grep -v '^\s' >&2; die "kafka admin $* failed"; }
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
  admin) shift; admin "$@" ;;
  *) echo "usage: $0 install|start|stop|restart|wipe|bootstrap|admin" >&2; exit 2 ;;
esac
