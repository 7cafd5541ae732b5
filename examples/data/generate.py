#!/usr/bin/env python3
"""Writes the example data sets (deterministic: same bytes every run).

  cpu.csv         CPU utilisation (%) of three hosts every 5 minutes for three
                  days, with a daily cycle, noise, and three incidents:
                  web-1 spikes to ~97% on day 2 at 14:00 for 15 minutes,
                  db-1's level shifts from ~30% to ~70% on day 3 at 03:00 for
                  two hours, web-2 drops to 0 (an outage) on day 2 at 22:00
                  for 20 minutes.
  sensors.jsonl   Four machines report nested readings every 10 seconds for
                  two hours. m-2 develops a bearing fault (vibration and
                  temperature rise together) from minute 80; m-3 loses
                  pressure at minute 100 for 3 minutes. Some readings lack
                  pressure (filled by the pipeline), and three lines are
                  malformed on purpose to show the dead-letter path.
  sensors-known-good.jsonl
                  The first 75 minutes of sensors.jsonl, before either fault
                  and without the malformed lines: the known-good history a
                  Model of normal behaviour is trained on.
  bearings.csv    Labelled readings for supervised models: 3000 readings of
                  four machines (temperature, vibration, pressure), 10% of
                  them from a failing bearing (vibration and temperature
                  raised by a random severity; fault=true), the rest healthy
                  (fault=false), some healthy ones hot or shaky on their own.

Run from anywhere: python3 examples/data/generate.py
"""
import json
import math
import os
import random
from datetime import datetime, timedelta, timezone

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu():
    rng = random.Random(42)
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    base = {"web-1": 35.0, "web-2": 40.0, "db-1": 30.0}
    rows = ["timestamp,host,cpu"]
    for i in range(3 * 288):
        t = start + timedelta(minutes=5 * i)
        day, minute = divmod(i * 5, 1440)
        for host, level in base.items():
            daily = 15.0 * math.sin((minute / 1440.0) * 2 * math.pi - math.pi / 2)
            v = level + daily + rng.gauss(0, 2.0)
            if host == "web-1" and day == 1 and 14 * 60 <= minute < 14 * 60 + 15:
                v = 97.0 + rng.gauss(0, 1.0)
            if host == "db-1" and day == 2 and 3 * 60 <= minute < 5 * 60:
                v += 40.0
            if host == "web-2" and day == 1 and 22 * 60 <= minute < 22 * 60 + 20:
                v = 0.0
            v = min(max(v, 0.0), 100.0)
            rows.append(f"{t:%Y-%m-%d %H:%M:%S},{host},{v:.2f}")
    return "\n".join(rows) + "\n"


def sensors():
    rng = random.Random(7)
    start = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
    lines = []
    machines = {"m-1": "plant-a", "m-2": "plant-a", "m-3": "plant-b", "m-4": "plant-b"}
    for i in range(720):
        t = start + timedelta(seconds=10 * i)
        minute = i / 6.0
        for m, site in machines.items():
            temp = 60.0 + rng.gauss(0, 0.8)
            vib = 2.0 + rng.gauss(0, 0.15)
            pressure = 300.0 + rng.gauss(0, 3.0)
            if m == "m-2" and minute >= 80:
                ramp = min((minute - 80) / 10.0, 1.0)
                vib += 6.0 * ramp
                temp += 12.0 * ramp
            if m == "m-3" and 100 <= minute < 103:
                pressure -= 120.0
            readings = {"temp_c": round(temp, 2), "vibration_mm_s": round(vib, 3)}
            if rng.random() > 0.03:
                readings["pressure_kpa"] = round(pressure, 1)
            lines.append(json.dumps({"machine": m, "site": site, "ts": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "readings": readings}))
    known_good = [line for line, i in zip(lines, (j // 4 for j in range(len(lines)))) if i < 450]
    with open(os.path.join(HERE, "sensors-known-good.jsonl"), "w", newline="\n") as f:
        f.write("\n".join(known_good) + "\n")
    print(f"wrote sensors-known-good.jsonl: {len(known_good)} lines")
    # Malformed on purpose: the pipeline must dead-letter these and carry on.
    lines.insert(100, '{"machine": "m-1", "site": "plant-a", "ts": "2026-11-01T08:04:10Z", "readings": {"temp_c": 60.1,')
    lines.insert(200, json.dumps({"machine": "m-4", "site": "plant-b", "ts": "2026-11-01T08:08:20Z", "readings": {"temp_c": "hot", "vibration_mm_s": 2.0, "pressure_kpa": 301.0}}))
    lines.insert(300, json.dumps({"machine": "m-2", "site": "plant-a", "readings": {"temp_c": 60.0, "vibration_mm_s": 2.0}}))
    return "\n".join(lines) + "\n"


def bearings():
    rng = random.Random(11)
    rows = ["machine,temperature,vibration,pressure,fault"]
    for i in range(3000):
        m = f"m-{i % 4 + 1}"
        temp = 60.0 + rng.gauss(0, 1.5)
        vib = 2.0 + rng.gauss(0, 0.3)
        pressure = 300.0 + rng.gauss(0, 4.0)
        fault = rng.random() < 0.10
        if fault:
            severity = rng.uniform(0.2, 1.0)
            vib += 4.0 * severity + rng.gauss(0, 0.3)
            temp += 8.0 * severity + rng.gauss(0, 1.0)
        elif rng.random() < 0.05:
            # Healthy but hot (a warm day) or shaky (a loose mount), not both.
            if rng.random() < 0.5:
                temp += rng.uniform(3.0, 8.0)
            else:
                vib += rng.uniform(1.0, 3.0)
        rows.append(f"{m},{temp:.2f},{vib:.3f},{pressure:.1f},{str(fault).lower()}")
    return "\n".join(rows) + "\n"


def main():
    for name, text in (("cpu.csv", cpu()), ("sensors.jsonl", sensors()), ("bearings.csv", bearings())):
        with open(os.path.join(HERE, name), "w", newline="\n") as f:
            f.write(text)
        print(f"wrote {name}: {text.count(chr(10))} lines")


if __name__ == "__main__":
    main()
