"""The benchmarks of dropblock_cuda (``python -m benchmarks --help``).

Commands (thin: flags, a configuration, a driver):

- ``python -m benchmarks`` (``benchmark.py``, its tables and plot in ``report.py``): the layer
  against the other DropBlock implementations on the ResNet-50 stage shapes, and the headline;
- ``python -m benchmarks.gpu_bench``: the CUDA kernels against a device-to-device copy;
- ``python -m benchmarks.train_step``: DropBlock's cost inside a ResNet training step;
- ``python -m benchmarks.regularisation``: does DropBlock regularise, on data shipped in a wheel;
- ``python -m benchmarks.host_time``: the host time of one eager call on a tiny input, against
  ``F.dropout``;
- ``bash benchmarks/gpu_check.sh``: everything a GPU machine checks, in one time-boxed run
  (``sanitizer_smoke.py`` is its compute-sanitizer script).

The library they share: ``measure`` (timing loops, interleaved rounds, saved and peak memory,
geometric mean), ``gate`` (is an output a valid DropBlock output?), ``peers`` (the registry of
implementations; ``reference_dropblock`` is the corrected seed-article baseline), ``environment``
(device, versions, commit), ``reporting`` (formatting, progress bar, CSV/JSON/markdown/plot
writers) and ``cli`` (the flags every command shares, ``--quick`` among them).
"""
