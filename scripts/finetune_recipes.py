"""The paper's fine-tuning recipes: write ``configs/finetune/*.yaml`` and their cost estimates.

``python scripts/finetune_recipes.py`` rewrites the recipe files (plain dumps of
:class:`~revcurse.config.FinetuneConfig`) from the table below; ``--check`` exits 1 if a shipped
file differs from it; ``--costs`` prints the cost table of docs/finetune.md. One table says, for
each model, its sampler, chat template, LoRA targets and batch, and for each dataset its decoding
length and training length.

The costs are estimates from arithmetic, not measurements: FLOPs per token ``2N`` forward and
``4N`` for a LoRA training step (forward, and the backward to activations; the adapters' own
gradients are negligible), sequence lengths assumed per dataset including the chat frame, and an
assumed share of an H100's bf16 peak. Nothing here was run on a GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

from revcurse.config import FinetuneConfig, apply_overrides, dump_yaml, load_yaml
from revcurse.experiments.finetune import evaluation_shard

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "configs" / "finetune"

MODELS = {
    # name: (family, local path, parameters, model-specific overrides)
    "llada-8b": ("llada", "models/LLaDA-8B-Instruct", 8.02e9, [
        # LLaDA's own reverse-evaluation settings: low-confidence remasking, EOS/EoT committed
        # last, the confidence softmax in the model's dtype (its current generate.py)
        "eval.remasking=low_confidence", "eval.suppress_eos_confidence=true",
        "eval.confidence_dtype=model",
    ]),
    "dream-7b": ("dream", "Dream-org/Dream-v0-Instruct-7B", 7.62e9, [
        # Dream's own sampler and published algorithm (entropy, alg_temp 0); temperature 0 as
        # every model here is evaluated (its README samples at 0.2 with top_p 0.95)
        "eval.sampler=dream", "eval.alg=entropy", "eval.alg_temp=0.0",
        "eval.confidence_dtype=model",
        # Dream's training weighting (CART, p = 0.3) in place of LLaDA's 1/t
        "train.loss_weighting=cart", "train.cart_p=0.3",
    ]),
    "llama-3.1-8b": ("llama", "meta-llama/Llama-3.1-8B-Instruct", 8.03e9, []),
    "qwen2.5-7b": ("qwen2", "Qwen/Qwen2.5-7B-Instruct", 7.62e9, []),
}  # fmt: skip

DATASETS = {
    # name: (training statements, test queries (all splits), tokens per statement with the chat
    #        frame (assumed), overrides)
    "parent-child": (1513, 3026, 64, ["train.steps=1000", "eval.gen_length=8"]),
    "person-description": (3600, 2700, 96, [
        "train.steps=2000", "eval.gen_length=32", "eval.steps=32", "eval.block_length=8",
    ]),
    "trex": (5000, 2000, 64, ["train.steps=1000", "eval.gen_length=8", "data.path=data/trex/TREx"]),
}  # fmt: skip
"""T-REx's sizes depend on the copy given in data.path; 5000 / 2000 are assumptions."""

COMMON = [
    "lora.r=16", "lora.alpha=32", "lora.targets=attention+mlp", "train.batch_size=16",
    "train.micro_batch_size=0", "train.lr=1e-4", "train.warmup_steps=50", "train.schedule=cosine",
    "train.log_every=10", "train.checkpoint_every=100", "data.max_eval=0", "data.max_train=0",
    "eval.batch_size=32", "eval.n_distractors=9", "eval.n_mc=16", "model.chat_template=true",
    "probe.every=250", "probe.n_facts=64",
]  # fmt: skip

H100_BF16 = 989e12
"""Dense bf16 peak of an H100 SXM, FLOP/s."""
TRAIN_SHARE, EVAL_SHARE = 0.40, 0.15
"""Assumed share of the peak a LoRA step and the (small-batch, sampler-bound) evaluation reach."""


def recipe(model: str, dataset: str) -> FinetuneConfig:
    family, path, _, extra = MODELS[model]
    base = FinetuneConfig()
    sets = [f"model.family={family}", f"model.path={path}", f"data.dataset={dataset}", *COMMON,
            *DATASETS[dataset][3], *extra]  # fmt: skip
    return apply_overrides(base, sets)


def text(name: str, cfg: FinetuneConfig) -> str:
    header = (f"# revcurse finetune recipe: {name}. Run: revcurse finetune --config "
              f"configs/finetune/{name}.yaml\n# (a plain dump of FinetuneConfig, written by "
              "scripts/finetune_recipes.py; see docs/finetune.md)\n")  # fmt: skip
    return header + dump_yaml(cfg)


def recipes() -> dict[str, str]:
    return {f"{m}-{d}": text(f"{m}-{d}", recipe(m, d)) for m in MODELS for d in DATASETS}


def costs() -> str:
    """The cost table (estimates) for every recipe, on 1 and 8 GPUs."""
    rows = []
    for m, (family, _, n, _) in MODELS.items():
        for d, (_statements, n_test, seq, _) in DATASETS.items():
            cfg = recipe(m, d)
            train = 4 * n * seq * cfg.train.batch_size * cfg.train.steps
            ev = cfg.eval
            cands = ev.n_distractors + 1
            answer = max(2, ev.gen_length // 2)  # candidate answers: about half the region
            if family in ("llada", "dream"):  # no KV cache: every step re-reads the sequence
                per_query = (ev.steps or ev.gen_length) * seq + cands * (ev.n_mc + answer) * seq
            else:  # KV-cached greedy + one pass per candidate
                per_query = seq + cands * seq
            evaluate = 2 * 2 * n * per_query * n_test  # before and after fine-tuning
            t1 = train / (H100_BF16 * TRAIN_SHARE) / 3600
            e1 = evaluate / (H100_BF16 * EVAL_SHARE) / 3600
            # evaluation divides over the processes where its decoding draws nothing (the code's
            # own decision), else the main process evaluates while the others wait
            shared = evaluation_shard(cfg, SimpleNamespace(num_processes=8, process_index=0))
            e8 = e1 / 8 if shared is not None else e1
            rows.append(f"| `{m}-{d}` | {train / 1e15:,.0f} | {evaluate / 1e15:,.0f} | "
                        f"{t1 + e1:.2f} | {t1 / 8 + e8:.2f} |")  # fmt: skip
    return "\n".join([
        "| recipe | training PFLOP | evaluation PFLOP (before + after) | hours, 1 H100 | "
        "hours, 8 H100 |",
        "|---|---|---|---|---|",
        *rows,
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a shipped file differs")
    parser.add_argument("--costs", action="store_true", help="print the cost table")
    args = parser.parse_args()
    if args.costs:
        print(costs())
        return 0
    wanted = recipes()
    if args.check:
        stale = [n for n, t in wanted.items()
                 if not (OUT / f"{n}.yaml").is_file() or (OUT / f"{n}.yaml").read_text() != t]  # fmt: skip
        for name in stale:
            print(f"configs/finetune/{name}.yaml differs from scripts/finetune_recipes.py")
        return 1 if stale else 0
    for name, body in wanted.items():
        (OUT / f"{name}.yaml").write_text(body)
        load_yaml(FinetuneConfig, OUT / f"{name}.yaml")  # a recipe must load
    print(f"wrote {len(wanted)} recipes to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
