"""Memory, communication and step-time estimates of a (TP, PP, DP, micro-batch) layout.

Pure functions of sizes and ranks (no process groups), so they are unit-tested directly; only
`inventory()` looks at a built model (any device, `meta` included) to count its parameters.

Memory per rank (bytes), for the pipeline stage that needs most:
- static, per parameter of the stage (TP-sharded core linears / tp, everything else replicated):
  bf16 training 2 (bf16 weight) + 4 (fp32 grad buffer: Megatron DDP grad_reduce_in_fp32) + 4 (the
  harness's fp32 EMA) + 12/dp (fp32 main weight + Adam m, v, sharded by the distributed optimizer);
  fp32 training 4 + 4 + 4 + 8/dp (the main weight is the model weight).
- activations: tensors autograd saves for backward, from the shapes (harness/parallel/costs.py,
  which also models parallel.recompute and parallel.sequence_parallel); 1F1B keeps min(pp - k, m)
  micro-batches in flight on stage k, each with its received and sent packed state.
- workspace: transient tensors at the start of backward (`workspace_bytes`), plus the one layer or
  ResBlock that recomputation rebuilds at a time (`recompute_bytes`).
Communication per step: TP all-reduces (3 forward, 4 backward per core layer and micro-batch), PP
sends of the packed state (`PackSpec.rows()` x micro-batch x hidden, forward and backward), DP
reduce-scatter of fp32 gradients + all-gather of weights (distributed optimizer), ring volumes.
Step time: (m + pp - 1) x the slowest stage's micro-batch time (1F1B bubble (pp-1)/(m+pp-1)),
a micro-batch time being FLOPs / (peak x efficiency x r / (r + half_rows), r = micro-batch x
tokens: small GEMMs run below peak) + activation traffic / HBM bandwidth + its TP and PP
communication; plus the DP gradient/weight exchange, counted in full: an upper bound when
parallel.overlap_grad_reduce / overlap_param_gather hide part of it behind compute. Bandwidths are
per-GPU classes (`INTERCONNECTS`), stated assumptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from harness.config import ModelConfig
from harness.parallel.costs import (
    Shape,
    ends_activation_elems,
    ends_flops,
    layer_activation_elems,
    layer_flops,
    recompute_bytes,
    workspace_bytes,
)
from harness.parallel.pipeline import split_layers

GROUPS = (("cond", ("cond.",)), ("core layers", ("core.layers.",)), ("core other", ("core.",)), ("levels", ("",)))
GiB = 2**30


def breakdown(model: nn.Module) -> dict[str, int]:
    """Parameters per group (first matching prefix of GROUPS wins) and in total."""
    counts = dict.fromkeys([g for g, _ in GROUPS], 0)
    for name, p in model.named_parameters():
        counts[next(g for g, prefixes in GROUPS if name.startswith(prefixes))] += p.numel()
    counts["total"] = sum(counts.values())
    return counts


@dataclass(frozen=True)
class ParamInventory:
    """Parameter counts by where a parameter lives (first/last pipeline stage, each core layer) and
    whether tensor parallelism splits it."""

    first: int               # first stage only: conditioning, stem, encoder, core input; replicated
    last: int                # last stage only: core output, decoder, head; replicated
    layer_replicated: int    # per core layer: norms, row-parallel biases, adaLN table
    layer_sharded: int       # per core layer: column/row-parallel weights, column-parallel biases
    layers: int
    groups: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.first + self.last + self.layers * (self.layer_replicated + self.layer_sharded)

    def stage(self, tp: int, num_layers: int, first: bool, last: bool) -> int:
        """Parameters held by one rank of a stage with `num_layers` core layers at tensor-parallel size tp."""
        return (self.first if first else 0) + (self.last if last else 0) + num_layers * (
            self.layer_replicated + self.layer_sharded // tp)


def inventory(model: nn.Module, first_only: set[str], last_only: set[str]) -> ParamInventory:
    """Count a whole model (all layers, TP=1); `first_only` / `last_only` name the parameters of the
    first / last stage's extras (from models built with pre_process / post_process alone)."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    sharded = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, ColumnParallelLinear):
            sharded |= {f"{mod_name}.{n}" for n, _ in module.named_parameters()}
        elif isinstance(module, RowParallelLinear):
            sharded.add(f"{mod_name}.weight")
    per_layer: dict[str, list[int]] = {}
    first = last = 0
    for name, p in model.named_parameters():
        if name.startswith("core.layers."):
            layer = name.split(".")[2]
            per_layer.setdefault(layer, [0, 0])[name in sharded] += p.numel()
        elif name in first_only:
            first += p.numel()
        elif name in last_only:
            last += p.numel()
        else:
            raise ValueError(f"parameter {name} is neither in a core layer nor in the first or last stage")
    counts = {tuple(v) for v in per_layer.values()}
    if len(counts) != 1:
        raise ValueError(f"core layers differ in size: {sorted(counts)}")
    (rep, shard), = counts
    return ParamInventory(first, last, rep, shard, len(per_layer), breakdown(model))


def build_inventory(cfg: ModelConfig, vocab_size: int | None = 1000, text_dim: int | None = None) -> ParamInventory:
    """Build the model on the meta device (whole, first-stage extras alone, last-stage extras alone)
    and count it; needs Megatron's process groups (a world of one will do)."""
    import torch

    from harness.model.uvit import build_model

    def names(**kw) -> tuple[nn.Module, set[str]]:
        with torch.device("meta"):
            model = build_model(cfg, vocab_size=vocab_size, text_dim=text_dim, seed=0, initialize=False, **kw)
        return model, {n for n, _ in model.named_parameters()}

    whole, _ = names()
    _, first = names(layer_ids=range(0), pre_process=True, post_process=False)
    _, last = names(layer_ids=range(0), pre_process=False, post_process=True)
    return inventory(whole, first, last)


@dataclass(frozen=True)
class Link:
    """Per-GPU bandwidths (bytes/s) and per-message latency (s) of an interconnect class."""

    intra_bw: float
    inter_bw: float
    latency_s: float


INTERCONNECTS = {
    # NVLink 4 inside a node (~450 GB/s per direction per H100), one 400 Gb/s NDR rail per GPU between nodes.
    "nvlink-ib": Link(intra_bw=450e9, inter_bw=50e9, latency_s=10e-6),
    # PCIe 5 x16 inside a node (~50 GB/s, through the host), 200 Gb/s HDR per GPU between nodes.
    "ib": Link(intra_bw=50e9, inter_bw=25e9, latency_s=15e-6),
    # PCIe inside a node, one 200 Gb/s Ethernet (RoCE) NIC shared by all GPUs of a node.
    "ethernet": Link(intra_bw=50e9, inter_bw=25e9 / 8, latency_s=50e-6),
}


@dataclass(frozen=True)
class Cluster:
    gpus_per_node: int = 8
    nodes: int = 1
    gpu_mem_gb: float = 80.0
    interconnect: str = "nvlink-ib"
    peak_tflops: float = 989.0        # dense bf16 of an H100 SXM
    efficiency: float = 0.5           # achieved fraction of peak on large matmuls and convolutions
    half_rows: int = 256              # GEMM rows (micro-batch x tokens) at which half of that is reached
    hbm_gbps: float = 3350.0          # HBM bandwidth (element-wise traffic of activations)
    reserve_gb: float = 6.0           # CUDA context, NCCL buffers, allocator fragmentation

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.nodes


@dataclass(frozen=True)
class Estimate:
    """One layout's estimate (bytes, seconds); memory and comm of the stage that needs most."""

    tp: int
    pp: int
    dp: int
    micro_batch: int
    num_micro: int
    params_per_rank: int
    weights_bytes: float
    grads_bytes: float
    optimizer_bytes: float
    ema_bytes: float
    activation_bytes: float
    workspace_bytes: float
    tp_bytes: float
    pp_bytes: float
    dp_bytes: float
    compute_s: float
    comm_s: float
    bubble: float
    step_s: float
    fits: bool

    @property
    def memory_bytes(self) -> float:
        return (self.weights_bytes + self.grads_bytes + self.optimizer_bytes + self.ema_bytes
                + self.activation_bytes + self.workspace_bytes)


def ring_bytes(size: float, n: int, kind: str) -> float:
    """Bytes each rank sends in a ring all-reduce / reduce-scatter / all-gather of `size` bytes over n ranks."""
    if n <= 1:
        return 0.0
    return size * (n - 1) / n * (2 if kind == "all-reduce" else 1)


def estimate(sh: Shape, inv: ParamInventory, cluster: Cluster, tp: int, pp: int, micro_batch: int,
             global_batch: int, *, precision: str = "bf16", distributed_optimizer: bool = True,
             pp_layers: list[int] | None = None, recompute: str = "none", recompute_min_px: int = 256,
             sequence_parallel: bool = False) -> Estimate:
    """Memory, communication and time of one layout; `dp` is what is left of the cluster.
    `recompute` / `recompute_min_px` / `sequence_parallel` as the parallel.* config keys."""
    dp = cluster.world // (tp * pp)
    b, m = micro_batch, global_batch // (micro_batch * dp)
    act_b = 2 if precision == "bf16" else 4
    link = INTERCONNECTS[cluster.interconnect]
    stages = split_layers(sh.layers, pp, pp_layers)
    core_rc, min_px = recompute in ("core", "full"), recompute_min_px if recompute == "full" else 0
    layer_act, layer_fp32 = layer_activation_elems(sh, b, tp, sequence_parallel=sequence_parallel, recomputed=core_rc)
    layer_bytes = layer_act * act_b + layer_fp32 * 4
    rebuilt = recompute_bytes(sh, b, tp, act_b, core=core_rc, recompute_min_px=min_px,
                              sequence_parallel=sequence_parallel)
    first_act, last_act = (e * act_b for e in ends_activation_elems(sh, b, min_px))
    last_act += 3 * sh.resolution_px ** 2 * b * 4                          # the loss's fp32 error
    packed = sh.pack_spec().rows() * b * sh.hidden * act_b
    first_fl, last_fl = ends_flops(sh, b)
    # Small GEMMs run below the large-GEMM efficiency: rows / (rows + half_rows) of it, rows = b * tokens.
    rows_core = b * sh.grid ** 2
    peak = cluster.peak_tflops * 1e12 * cluster.efficiency * rows_core / (rows_core + cluster.half_rows)
    # TP: forward all-reduces after 3 row-parallel linears, backward after 4 column-parallel ones.
    s, h, L = sh.grid ** 2, sh.hidden, sh.text_len
    tp_layer = ring_bytes((6 * s + L) * b * h * act_b, tp, "all-reduce")
    # Megatron orders ranks TP fastest, then DP, then PP: a DP group spans tp*dp consecutive ranks,
    # and with more than one node some pipeline neighbours always sit on different nodes.
    pp_bw = link.intra_bw if cluster.nodes == 1 else link.inter_bw
    dp_bw = link.intra_bw if tp * dp <= cluster.gpus_per_node else link.inter_bw
    rows = []
    for k, layers in enumerate(stages):
        first, last, n = k == 0, k == pp - 1, len(layers)
        params = inv.stage(tp, n, first, last)
        optim = params * (12 if precision == "bf16" else 8) / (dp if distributed_optimizer else 1)
        ends = (first_act if first else 0) + (last_act if last else 0)
        sends = (not first) + (not last)                                    # packed states received + sent
        acts = min(pp - k, m) * (n * layer_bytes + ends + sends * packed)
        workspace = workspace_bytes(sh, b, tp, act_b, last) + rebuilt
        # A recomputed core layer runs its forward twice (recomputed ResBlocks' second forward is not counted).
        flops = 3 * ((first_fl if first else 0) + (last_fl if last else 0)) + (3 + core_rc) * n * layer_flops(sh, b) / tp
        t_compute = flops / peak + 3 * (n * layer_bytes + ends) / (cluster.hbm_gbps * 1e9)  # write, read, grad
        t_tp = n * (tp_layer / link.intra_bw + 7 * link.latency_s) if tp > 1 else 0.0
        t_pp = sends * (packed / pp_bw + link.latency_s) if pp > 1 else 0.0
        dp_bytes = (ring_bytes(params * 4, dp, "reduce-scatter") + ring_bytes(params * act_b, dp, "all-gather")
                    if distributed_optimizer else ring_bytes(params * 4, dp, "all-reduce"))
        rows.append(dict(params=params, w=params * act_b, g=params * 4, e=params * 4, o=optim, a=acts, ws=workspace,
                         t_compute=t_compute, t_comm=t_tp + t_pp, t_dp=dp_bytes / dp_bw + 2 * link.latency_s * (dp > 1),
                         tp_bytes=m * n * tp_layer, pp_bytes=m * sends * packed, dp_bytes=dp_bytes))
    for r in rows:
        r["mem"] = r["w"] + r["g"] + r["e"] + r["o"] + r["a"] + r["ws"]
    worst = max(rows, key=lambda r: r["mem"])
    slow = max(rows, key=lambda r: r["t_compute"] + r["t_comm"])
    step = (m + pp - 1) * (slow["t_compute"] + slow["t_comm"]) + max(r["t_dp"] for r in rows)
    fits = worst["mem"] <= (cluster.gpu_mem_gb - cluster.reserve_gb) * GiB
    return Estimate(tp, pp, dp, b, m, worst["params"], worst["w"], worst["g"], worst["o"], worst["e"], worst["a"],
                    worst["ws"], max(r["tp_bytes"] for r in rows), max(r["pp_bytes"] for r in rows),
                    max(r["dp_bytes"] for r in rows), m * slow["t_compute"],
                    m * slow["t_comm"] + max(r["t_dp"] for r in rows), (pp - 1) / (m + pp - 1), step, fits)


def layouts(sh: Shape, cluster: Cluster, micro_batches: list[int], global_batch: int) -> list[tuple[int, int, int]]:
    """(tp, pp, micro_batch) candidates: TP within a node dividing the heads, PP <= layers, DP = rest,
    and global_batch a multiple of micro_batch * dp."""
    out = []
    for tp in (t for t in range(1, cluster.gpus_per_node + 1) if cluster.gpus_per_node % t == 0 and sh.heads % t == 0):
        for pp in (p for p in range(1, sh.layers + 1) if (cluster.world // tp) % p == 0):
            dp = cluster.world // (tp * pp)
            out += [(tp, pp, mb) for mb in micro_batches if global_batch % (mb * dp) == 0]
    return out


def plan(sh: Shape, inv: ParamInventory, cluster: Cluster, micro_batches: list[int], global_batch: int,
         **kwargs) -> list[Estimate]:
    """Estimates of every candidate layout: those that fit first, fastest first, then the rest by memory."""
    rows = [estimate(sh, inv, cluster, tp, pp, mb, global_batch, **kwargs)
            for tp, pp, mb in layouts(sh, cluster, micro_batches, global_batch)]
    return sorted(rows, key=lambda e: (not e.fits, e.step_s if e.fits else e.memory_bytes))
