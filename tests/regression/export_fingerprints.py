"""Fingerprints of the exports of the four tiny presets after 20 training steps.

A refactor that must not change behaviour (issue 18: the family/objective registry) records the
fingerprints before it starts and checks them after: every exported tensor must be
bit-identical. The fingerprints depend on the machine's floating-point kernels, so they are
recorded and checked on the same machine, not committed as a test.

  python -m tests.regression.export_fingerprints --record /tmp/fp.json
  python -m tests.regression.export_fingerprints --check /tmp/fp.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile

PRESETS = ("bert_tiny", "t5_tiny", "bart_tiny", "xlnet_tiny")
OVERRIDES = ("train.steps=20", "train.eval_every=20", "train.eval_steps=2", "train.log_every=10",
             "checkpoint.every=20", "train.export_at_end=true")


def fingerprint(preset: str, root: str) -> dict[str, str]:
  """sha256 of every tensor (name, dtype, shape, bytes) in the preset's export, and of the
  exported config.json."""
  from safetensors.numpy import load_file

  from pretrain import cli

  workdir = os.path.join(root, preset)
  code = cli.main(["train", "--config", preset, "--workdir", workdir, *OVERRIDES,
                   f"data.cache_dir={os.path.join(root, 'cache')}"])
  if code != 0:
    raise SystemExit(f"{preset}: pretrain train exited {code}")
  export = os.path.join(workdir, "export")
  out = {}
  for name, array in sorted(load_file(os.path.join(export, "model.safetensors")).items()):
    digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())
    out[name] = digest.hexdigest()
  with open(os.path.join(export, "config.json"), encoding="utf-8") as f:
    out["config.json"] = hashlib.sha256(f.read().encode()).hexdigest()
  return out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  mode = parser.add_mutually_exclusive_group(required=True)
  mode.add_argument("--record", metavar="JSON")
  mode.add_argument("--check", metavar="JSON")
  parser.add_argument("--presets", nargs="*", default=list(PRESETS))
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as root:
    got = {preset: fingerprint(preset, root) for preset in args.presets}
  if args.record:
    with open(args.record, "w", encoding="utf-8") as f:
      json.dump(got, f, indent=1, sort_keys=True)
    print(f"recorded {sum(map(len, got.values()))} fingerprints of {args.presets}")
    return 0
  with open(args.check, encoding="utf-8") as f:
    want = json.load(f)
  bad = [f"{p}/{k}" for p in args.presets for k in sorted(set(want[p]) | set(got[p]))
         if want[p].get(k) != got[p].get(k)]
  for item in bad:
    print(f"differs: {item}")
  print(f"{'FAILED' if bad else 'identical'}: {sum(map(len, got.values()))} fingerprints of "
        f"{args.presets}, {len(bad)} differ")
  return 1 if bad else 0


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.exit(main())
