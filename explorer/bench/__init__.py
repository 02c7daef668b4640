"""Benchmarks, one module per suite: `python -m explorer bench {sampling,kernels,block,continuous,calm,app,noise}`.

Each suite writes `bench_results/<suite>.json` and its markdown table beside it (`measure.write_results`);
`measure` also holds the timing and peak-memory helpers. What a suite judges samples with (prompts from the
validation split, generative perplexity, unigram entropy) is evaluation and lives in `explorer.eval`.
"""
