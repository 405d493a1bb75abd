"""ALBERT (work in progress, not registered yet): the module (`model.py`) and its tensor map
to `transformers.AlbertForPreTraining` (`export.py`) are done and tested
(tests/t5x_like/test_model_albert.py). Still to come before the registration: the `model`
section (config.py), FLOPs, presets, the folder export, the SOP + n-gram masking objective and
its task."""
