#!/usr/bin/env bash
# Vigil against PySpark Structured Streaming on the peer data set, in one
# run on one machine (issue 13: ">= 10x on the same 2 cores").
#
#   runner/benches/peer_vs_pyspark.sh
#
# Needs a Python with pyspark 4.3 and numpy (PYTHON=..., default python3;
# `pip install pyspark==4.3.0 numpy` in a venv) and a release build of
# `vigil` (VIGIL=..., default target/release/vigil). Data: the peer data set,
# 2 M records in 200 files (../shared/peers/gen_jsonl.py), written to DATA
# (default /tmp/vigil-peer-2m) unless already there.
#
# PySpark runs its own job (spark_stream.py: StandardScaler + k-means(8),
# local[2], foreach sink). Vigil runs two pipelines over the same records:
# the same k-means job (runner/benches/peer/kmeans.yaml) and the peer
# pipeline of the issue (standardize + halfSpaceTrees), each as one
# process (one core) and as two processes on two halves of the records
# split by key, which is how the runner shares a stream among threads
# (each key's state on one of them). Splitting is done before the clock
# starts; Vigil's time is from process start to the last output written
# (to /dev/null), PySpark's is its own report from its first micro-batch to
# its last (without its 15-30 s start-up); its second half, once the JVM has
# compiled the hot code, is printed too. Ratios are against the whole run.
set -euo pipefail
cd "$(dirname "$0")/../.."
PEERS=${PEERS:-$(cd ../shared/peers && pwd)}
DATA=${DATA:-/tmp/vigil-peer-2m}
PYTHON=${PYTHON:-python3}
VIGIL=${VIGIL:-target/release/vigil}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [ ! -d "$DATA" ] || [ "$(ls "$DATA" | wc -l)" -lt 200 ]; then
  python3 "$PEERS/gen_jsonl.py" --out "$DATA" --records 2000000 --files 200 >&2
fi
cat "$DATA"/*.jsonl > "$WORK/all.jsonl"
records=$(wc -l < "$WORK/all.jsonl")
python3 - "$WORK" <<'PY'
import json, sys, zlib
work = sys.argv[1]
outs = [open(f"{work}/half{i}.jsonl", "w") for i in range(2)]
for line in open(f"{work}/all.jsonl"):
    outs[zlib.crc32(json.loads(line)["key"].encode()) % 2].write(line)
PY
head -200000 "$WORK/all.jsonl" > "$WORK/train.jsonl"
"$VIGIL" train runner/benches/peer/kmeans.yaml -i "$WORK/train.jsonl" -o "$WORK/models" >&2
model=$(ls "$WORK"/models/*.vmodel | head -1)

# Wall seconds of the given commands run at once.
wall() {
  local start end pids=()
  start=$(date +%s.%N)
  for cmd in "$@"; do bash -c "$cmd" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

echo "PySpark (spark_stream.py, local[2]) ..." >&2
"$PYTHON" "$PEERS/spark_stream.py" --input "$DATA" --json "$WORK/spark.json" > "$WORK/spark.log" 2>&1 \
  || { tail -20 "$WORK/spark.log" >&2; exit 1; }
read -r spark spark_warm < <(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(round(d['records_per_s']), round(d['records_per_s_second_half']))" "$WORK/spark.json")

printf '%-46s %12s %9s\n' "run ($records records)" "records/s" "x PySpark"
printf '%-46s %12s %9s\n' "PySpark Structured Streaming, local[2], k-means" "$spark" "1.00"
printf '%-46s %12s %9.2f\n' "  the same run's second half (JIT warm)" "$spark_warm" "$(echo "$spark_warm / $spark" | bc -l)"
for job in kmeans half-space-trees; do
  y=runner/benches/peer/$job.yaml
  extra=""
  [ "$job" = kmeans ] && extra="--model peer-kmeans=$model"
  run() { echo "$VIGIL local $y $extra -i $1 -o /dev/null 2>/dev/null"; }
  one=$(wall "$(run "$WORK/all.jsonl")")
  two=$(wall "$(run "$WORK/half0.jsonl")" "$(run "$WORK/half1.jsonl")")
  for v in "1 process:$one" "2 processes:$two"; do
    rate=$(echo "$records / ${v#*:}" | bc -l)
    printf '%-46s %12.0f %9.2f\n' "vigil local $job, ${v%%:*}" "$rate" "$(echo "$rate / $spark" | bc -l)"
  done
done
