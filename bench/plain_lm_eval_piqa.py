"""The plain side of bench/eval_overhead.py: PIQA through stock lm-eval, no PruneBoard code.

Imports only lm-eval, transformers and torch (plus the standard library); run with `python -I` so
the project is not on sys.path. Protocol: argv = model_dir, validation.jsonl, batch_size, dtype[, torch threads];
loads the model once (not timed), prints `READY`, then for every line `run LIMIT` on stdin runs
`lm_eval.simple_evaluate` and prints one JSON line `RESULT {...}` (seconds, scores, per-doc
log-likelihoods). The task dict mirrors PruneBoard's `piqa` task field for field.
"""
import json
import sys
import tempfile
import time


def piqa_task(data_file: str, cache_dir: str) -> dict:
    return {
        "task": "piqa",
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"validation": data_file}, "cache_dir": cache_dir},
        "validation_split": "validation",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{goal}}\nAnswer:",
        "doc_to_target": "label",
        "doc_to_choice": "{{[sol1, sol2]}}",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
        "num_fewshot": 0,
    }


def main() -> None:
    model_dir, data_file, batch_size, dtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    import torch

    if threads:
        torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), trust_remote_code=False)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    print("READY", flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] != "run":
            break
        limit = int(command[1])
        with tempfile.TemporaryDirectory(prefix="plain-piqa-") as cache:
            started = time.perf_counter()
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            out = lm_eval.simple_evaluate(model=lm, tasks=[piqa_task(data_file, cache)],
                                          task_manager=TaskManager(include_defaults=False), limit=limit,
                                          log_samples=True, bootstrap_iters=0)
            seconds = time.perf_counter() - started
        results = out["results"]["piqa"]
        lls = {str(s["doc_id"]): [float(r[0]) for r in s["filtered_resps"]] for s in out["samples"]["piqa"]}
        accs = {str(s["doc_id"]): float(s["acc"]) for s in out["samples"]["piqa"]}
        project = sorted(m for m in sys.modules if m.split(".")[0] in ("backend", "db", "jobs", "ui"))
        print("RESULT " + json.dumps({"seconds": seconds, "acc": results["acc,none"],
                                      "acc_norm": results["acc_norm,none"], "lls": lls, "doc_acc": accs,
                                      "project_modules": project}), flush=True)


if __name__ == "__main__":
    main()
