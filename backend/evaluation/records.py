"""Per-sample records and aggregate scores built from lm-eval's logged samples.

Split from `backend.evaluation.harness` (which runs lm-eval); the record layout is documented there. It
read the task as `backend.evaluation.prepared.PreparedTask`.
"""
from __future__ import annotations

from typing import Any

from backend.evaluation.prepared import PreparedTask
from backend.result import SampleRecord, ScoreRecord
from backend.evaluation.scoring import repetition_rate, split_thinking

def _metric_key(metric: str, filter_name: str, n_filters: int) -> str:
    return metric if n_filters == 1 else f"{metric},{filter_name}"


def _count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


def records(p: PreparedTask, examples: list[dict[str, Any]], tokenizer) -> list[SampleRecord]:
    if p.spec.output_type == "loglikelihood":
        return [_choice_record(p, ex, tokenizer) for ex in sorted(examples, key=lambda e: e["doc_id"])]
    return _generation_records(p, examples, tokenizer)


def _example_metrics(ex: dict[str, Any], n_filters: int) -> dict[str, float]:
    return {_metric_key(m, ex["filter"], n_filters): float(ex[m]) for m in ex["metrics"]}


def _choice_record(p: PreparedTask, ex: dict[str, Any], tokenizer) -> SampleRecord:
    task, doc = p.task, ex["doc"]
    contexts = [args[0] for args in ex["arguments"]]
    continuations = [args[1] for args in ex["arguments"]]
    lls = [float(resp[0]) for resp in ex["filtered_resps"]]
    pred = max(range(len(lls)), key=lambda i: (lls[i], -i))  # first maximum, as np.argmax
    choices = task.doc_to_choice(doc)
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else -1
    output = "\n".join(
        f"{'*' if i == pred else ' '} [{i}] {ll:.4f} {choice}"
        for i, (ll, choice) in enumerate(zip(lls, choices))
    )
    metrics = _example_metrics(ex, 1)
    return SampleRecord(
        task=p.spec.name,
        doc_id=int(ex["doc_id"]),
        prompt="\n".join(dict.fromkeys(contexts)),
        output=output,
        extracted=str(pred),
        gold=str(gold),
        # > 0.5 for graded scores such as TruthfulQA's mc2 probability mass; 0/1 accuracies unchanged
        correct=metrics.get(p.spec.primary_metric, 0.0) > 0.5,
        prompt_tokens=_count_tokens(tokenizer, contexts[pred]),
        output_tokens=_count_tokens(tokenizer, continuations[pred]),
        metrics=metrics,
    )


def _generation_records(p: PreparedTask, examples: list[dict[str, Any]], tokenizer) -> list[SampleRecord]:
    n_filters = len(p.lm_config.get("filter_list") or [None])
    by_doc: dict[int, list[dict[str, Any]]] = {}
    for ex in examples:
        by_doc.setdefault(int(ex["doc_id"]), []).append(ex)
    records = []
    for doc_id in sorted(by_doc):
        group = by_doc[doc_id]
        metrics: dict[str, float] = {}
        extracted = None
        for ex in group:
            ex_metrics = _example_metrics(ex, n_filters)
            metrics.update(ex_metrics)
            if p.spec.primary_metric in ex_metrics:
                extracted = ex["filtered_resps"][0]
                if isinstance(extracted, (list, tuple)):  # k samples (no take_first): the first one's
                    extracted = extracted[0] if extracted else None
        first = group[0]
        prompt = first["arguments"][0][0]
        output = first["resps"][0][0]
        output_tokens = _count_tokens(tokenizer, output)
        trace = _trace_fields(p, output, output_tokens, tokenizer)
        records.append(SampleRecord(
            task=p.spec.name,
            doc_id=doc_id,
            prompt=prompt,
            output=output,
            extracted=None if extracted is None else str(extracted),
            gold=str(first["target"]),
            correct=bool(metrics.get(p.spec.primary_metric)),
            prompt_tokens=_count_tokens(tokenizer, prompt),
            output_tokens=output_tokens,
            metrics=metrics,
            **trace,
        ))
    return records


def _trace_fields(p: PreparedTask, output: str, output_tokens: int, tokenizer) -> dict[str, Any]:
    """reasoning / answer / finish_reason / thinking_tokens / truncated / repetition of a generation.

    Think paradigm: `split_thinking` with the task's markers (no end marker: truncated, answer "").
    Instruct: the whole output is the answer. finish_reason is "length" when the output has at
    least the budget's tokens (re-tokenized, as `output_tokens`), else "stop". repetition is
    `backend.evaluation.scoring.repetition_rate` (share of repeated word 4-grams) of the whole output.
    """
    budget = (p.generation or {}).get("max_gen_toks")
    finish = "length" if budget is not None and output_tokens >= budget else "stop"
    fields: dict[str, Any] = {"finish_reason": finish, "repetition": repetition_rate(output)}
    if p.think is not None:
        reasoning, answer, truncated = split_thinking(output, p.think.markers)
        fields.update(reasoning=reasoning, answer=answer, truncated=truncated,
                      thinking_tokens=_count_tokens(tokenizer, reasoning or ""))
    else:
        fields.update(reasoning=None, answer=output, truncated=False, thinking_tokens=None)
    return fields


def aggregate(p: PreparedTask, samples: list[SampleRecord]) -> list[ScoreRecord]:
    """Every metric of the task over all its samples: lm-eval's `mean` and `mean_stderr`."""
    from lm_eval.api.metrics import mean, mean_stderr

    key = p.manifest["comparability_key"]
    scores = []
    for metric in p.metric_names:
        missing = [s.doc_id for s in samples if metric not in s.metrics]
        if missing:
            raise RuntimeError(f"{p.spec.name}: samples {missing[:5]} have no metric {metric!r}")
        values = [s.metrics[metric] for s in samples]
        value = float(mean(values))
        stderr = float(mean_stderr(values)) if len(values) > 1 else None
        weight = dict(p.spec.metric_weights).get(metric)
        if weight is not None:  # a weighted mean (IFEval's instruction level); lm-eval gives no stderr
            weights = [s.metrics.get(weight, 1.0) for s in samples]
            value = sum(v * w for v, w in zip(values, weights)) / (sum(weights) or 1.0)
            stderr = None
        scores.append(ScoreRecord(
            task=p.spec.name,
            metric=metric,
            value=value,
            stderr=stderr,
            higher_is_better=p.spec.higher_is_better,
            primary=metric == p.spec.primary_metric,
            comparability_key=key,
        ))
    return scores
