"""What a benchmark runs on: the CPU's model and family (lscpu), the accelerator's kind, and the published dense
peaks that MFU on a GPU or TPU is measured against (on CPU the peak is measured on the spot: common.matmul_peak).

The table holds dense (no 2:4 sparsity) bf16 matrix peaks per chip, as the vendors publish them. NVIDIA's
datasheets print the sparse figure with a footnote that dense is half: 1,979 → 989 TFLOP/s for H100 / H200 SXM.
Sources (also in docs/benchmarks.md):
  H100 SXM 989, H100 PCIe 756: NVIDIA H100 Tensor Core GPU datasheet, "BFLOAT16 Tensor Core 1,979 / 1,513
    teraFLOPS*", * with sparsity (https://www.nvidia.com/en-us/data-center/h100/)
  H200 SXM 989: NVIDIA H200 Tensor Core GPU datasheet, "BFLOAT16 Tensor Core 1,979 TFLOPS*", * with sparsity
    (https://www.nvidia.com/en-us/data-center/h200/)
  A100 312: NVIDIA A100 Tensor Core GPU datasheet, "BFLOAT16 Tensor Core 312 TFLOPS | 624 TFLOPS*"
    (https://www.nvidia.com/en-us/data-center/a100/)
  TPU v4 275: Cloud TPU v4 docs, "Peak compute per chip (bf16) 275 TFLOPs" (https://cloud.google.com/tpu/docs/v4)
  TPU v5e 197: Cloud TPU v5e docs, "Peak compute per chip (bf16) 197 TFLOPs" (https://cloud.google.com/tpu/docs/v5e)
  TPU v5p 459: Cloud TPU v5p docs, "Peak compute per chip (bf16) 459 TFLOPs" (https://cloud.google.com/tpu/docs/v5p)
A device kind the table does not know (H100 NVL, H200 NVL, another TPU) has no peak: pass --peak.
"""

from __future__ import annotations

import subprocess

# (substrings that must all occur in jax's device_kind, substrings that must not, bf16 dense TFLOP/s, name). First
# match wins, so the PCIe H100 is tried before the SXM one (whose device_kind is e.g. "NVIDIA H100 80GB HBM3").
PUBLISHED_BF16_PEAKS = (
    (("h100", "pcie"), (), 756.0, "H100 PCIe"),
    (("h100",), ("nvl",), 989.0, "H100 SXM"),
    (("h200",), ("nvl",), 989.0, "H200 SXM"),
    (("a100",), (), 312.0, "A100"),
    (("tpu v4",), ("lite",), 275.0, "TPU v4"),
    (("tpu v5 lite",), (), 197.0, "TPU v5e"),
    (("tpu v5e",), (), 197.0, "TPU v5e"),
    (("tpu v5p",), (), 459.0, "TPU v5p"),
)
# jax names a v5p chip "TPU v5" (and a v5e "TPU v5 lite"): matched exactly, since "tpu v5" is a prefix of both.
EXACT_BF16_PEAKS = {"tpu v5": (459.0, "TPU v5p")}


def published_peak(device_kind: str) -> tuple[float, str] | None:
  """(bf16 dense FLOP/s, the table's name for the chip) for a jax `device_kind`, or None when the table has none."""
  kind = device_kind.strip().lower()
  if kind in EXACT_BF16_PEAKS:
    tflops, name = EXACT_BF16_PEAKS[kind]
    return tflops * 1e12, name
  for required, excluded, tflops, name in PUBLISHED_BF16_PEAKS:
    if all(s in kind for s in required) and not any(s in kind for s in excluded):
      return tflops * 1e12, name
  return None


def cpu_description() -> str:
  """'<lscpu model name>, CPU family <n>, model <m>, AVX-512 or not, <k> CPUs' (docs/benchmarks.md records it next
  to every figure: a family alone names CPUs with opposite features)."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return "unknown CPU"
  fields = {}
  for line in out.splitlines():
    key, _, value = line.partition(":")
    fields[key.strip()] = value.strip()
  model, family = fields.get("Model name", "unknown CPU"), fields.get("CPU family", "?")
  avx512 = "AVX-512" if "avx512f" in fields.get("Flags", "").split() else "no AVX-512"
  return f"{model}, CPU family {family}, model {fields.get('Model', '?')}, {avx512}, {fields.get('CPU(s)', '?')} CPUs"
