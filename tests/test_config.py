import pytest

from idd_lib import config, notebook
from idd_lib.config import apply_overrides, parse_weights
from idd_lib.presets import PROFILES, get_profile


def test_profiles_exist_and_unknown_is_a_clear_error():
    assert {"quick", "default"} <= set(PROFILES)
    with pytest.raises(ValueError, match="profile: unknown profile 'defualt'"):
        get_profile("defualt")


def test_overrides_are_typed_and_validated():
    cfg = get_profile("quick").run_config("idd", 0)
    new = apply_overrides(cfg, {"loss.idd.metric": "cosine", "train.iterations": "7", "data.hflip": "false",
                                "data.synthetic.position_prior": "0", "model.layers": "2 2 2 2"})
    assert new.loss.idd.metric == "cosine" and new.train.iterations == 7 and new.data.hflip is False
    assert new.data.synthetic.position_prior == 0.0 and new.model.layers == (2, 2, 2, 2)
    assert new.digest() != cfg.digest()
    with pytest.raises(ValueError, match="unknown option 'loss.idd.metrik'"):
        apply_overrides(cfg, {"loss.idd.metrik": "cosine"})
    with pytest.raises(ValueError, match="train.iterations expects an integer"):
        apply_overrides(cfg, {"train.iterations": "many"})


def test_an_option_added_later_keeps_the_digests_from_before_it():
    cfg = get_profile("default").run_config("idd", 0)
    before = cfg.to_dict()  # the fields as they were before train.cpu_amp existed
    for group in ("train", "teacher_train"):
        before[group] = {k: v for k, v in before[group].items() if k != "cpu_amp"}
    plain = apply_overrides(cfg, {"train.cpu_amp": "false"})
    assert plain.digest() == config.fields_digest(before)
    assert apply_overrides(cfg, {"train.cpu_amp": "true"}).digest() != plain.digest()


@pytest.mark.parametrize("text, message", [("idd=-1", "finite number >= 0"), ("idd=nan", "finite number >= 0"),
                                           ("idd=abc", "not a number"), ("idd", "key=value")])
def test_bad_weights_are_clear_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_weights(text)


def test_notebook_parameter_check_rejects_unknown_names_and_wrong_types():
    namespace = {"__annotations__": {"seed": int, "method": str, "scale": float}, "seed": 1, "method": "idd",
                 "scale": 2, "nb": notebook, "_i1": "x"}
    assert notebook.parameters(dict(namespace)) == {"seed": 1, "method": "idd", "scale": 2.0}
    # names a notebook creates are not parameters (a second Run All); papermill's unknown -p names are
    # caught in the kernel: tests/test_notebook_helpers.py
    assert notebook.parameters({**namespace, "result": 3}) == {"seed": 1, "method": "idd", "scale": 2.0}
    with pytest.raises(notebook.ParameterError, match="parameter seed: expected int, got 'one'"):
        notebook.parameters({**namespace, "seed": "one"})
    assert config.parse_assignments(" a=1 , b.c = x ", "options") == {"a": "1", "b.c": "x"}
