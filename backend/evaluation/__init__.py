"""Evaluate a model on PruneBoard tasks: `harness.evaluate` runs each task through lm-eval
(`lm_eval_adapter`, `backends`) as a `prepared.PreparedTask`, builds per-sample records and scores
(`records`, with `scoring`'s answer extraction and `thinking`'s reasoning control), and
`lm_eval_format` writes a stored run back in lm-eval's own file layout."""
