#!/usr/bin/env python3
"""River's HalfSpaceTrees on Vigil's multivariate benchmark: the peer of
`sensorZ` (runner/BENCHMARKS.md, Detection quality).

Per stream and key, a fresh `preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees()`
(River's documented set-up; seed 42, River's defaults otherwise) scores each
record, then learns it (progressive validation: a record never influences its
own score). Records with a missing channel get no score (null), as in Vigil.
Writes the scores in the layout `vigil eval --scores` reads, and prints the
learn+score throughput (no parsing: the records are read first).

  pip install river==0.26.1
  vigil eval --generate /tmp/mvb --seed 7
  python3 runner/benches/multivariate_river.py /tmp/mvb --out /tmp/river-scores.json
  vigil eval --corpus /tmp/mvb --scores /tmp/river-scores.json
"""
import argparse
import json
import os
import time

from river import anomaly, compose, preprocessing


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    manifest = json.load(open(os.path.join(args.corpus, "vigil-multivariate.json")))
    scores = {}
    rows = 0
    seconds = 0.0
    for stream in manifest["streams"]:
        features = stream["features"]
        records = [json.loads(line) for line in open(os.path.join(args.corpus, stream["file"]))]
        models = {}
        out = scores.setdefault(stream["name"], {})
        started = time.perf_counter()
        for r in records:
            key = r["key"]
            model = models.get(key)
            if model is None:
                model = models[key] = compose.Pipeline(
                    preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=42)
                )
            x = {f: r[f] for f in features}
            if any(v is None for v in x.values()):
                out.setdefault(key, []).append(None)
                continue
            out.setdefault(key, []).append(model.score_one(x))
            model.learn_one(x)
        seconds += time.perf_counter() - started
        rows += len(records)
    json.dump(scores, open(args.out, "w"))
    print(f"river HalfSpaceTrees: {rows} records in {seconds:.1f} s ({rows / seconds:,.0f} records/s, learn + score)")


if __name__ == "__main__":
    main()
