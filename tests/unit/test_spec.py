"""YAML -> PipelineSpec: unknown keys name their path, stages validate their own params, --set."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alignfactory.spec import PipelineSpec, SpecError, apply_set, load_spec, validate
from alignfactory.stages.assemble.filter import Filter
from alignfactory.stages.synthesize.generate import Generate

REPO = Path(__file__).resolve().parents[2]

SPEC = """\
name: demo
input:
  path: seeds.jsonl
model:
  backend: transformers
sampling:
  max_tokens: 64
seed: 7
stages:
  - name: dedup
  - name: generate
    params: {n: 2}
    resources: {batch_size: 4, concurrency: 2}
  - name: filter
    params:
      min_chars: 20
  - name: export
"""


def spec_file(tmp_path: Path, text: str = SPEC) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(text, "utf-8")
    return p


def tree(**changes) -> dict:
    t = yaml.safe_load(SPEC)
    t.update(changes)
    return t


def error_of(fn, *args, **kw) -> str:
    with pytest.raises(SpecError) as e:
        fn(*args, **kw)
    return str(e.value)


def test_valid_spec_loads_with_typed_stage_params(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    assert isinstance(spec, PipelineSpec)
    assert spec.name == "demo" and spec.seed == 7
    assert spec.input.path == "seeds.jsonl"
    assert spec.model.backend == "transformers"
    assert spec.sampling.max_tokens == 64 and spec.sampling.temperature == 0.7  # default kept
    assert [s.name for s in spec.stages] == ["dedup", "generate", "filter", "export"]
    assert spec.stages[1].resources.batch_size == 4 and spec.stages[1].resources.concurrency == 2
    assert spec.stages[0].resources.batch_size == 8  # default
    gen, flt = spec.stage_params(1), spec.stage_params(2)
    assert isinstance(gen, Generate.Params) and gen.n == 2
    assert isinstance(flt, Filter.Params) and flt.min_chars == 20 and flt.max_chars == 20000


def test_shipped_pipeline_spec_loads():
    spec = load_spec(REPO / "pipelines" / "sft_data.yaml")
    names = [s.name for s in spec.stages]
    # the design's flow order: curate, then synthesize and verify, then assemble
    assert names == [
        "dedup", "dedup", "instag", "tag_normalize", "select", "evolve", "decontaminate",
        "generate", "reject_sample", "filter", "judge", "constitution", "decontaminate", "export",
    ]  # fmt: skip
    assert spec.stage_params(1).method == "minhash"
    # prompts after evolve, responses after the last generative stage, against the shipped benchmarks
    prompts, responses = spec.stage_params(6), spec.stage_params(12)
    assert (prompts.on, responses.on) == ("instruction", "response")
    for params in (prompts, responses):
        assert {Path(b.path).name for b in params.benchmarks} >= {"humaneval.jsonl", "gsm8k_test.jsonl"}
    assert spec.stage_params(names.index("filter")).min_chars == 20
    for i in range(len(names)):  # every stage's params validate against its class
        spec.stage_params(i)


def test_sampling_spec_builds_a_sampling_with_seed_and_overrides():
    spec = validate(tree())
    s = spec.sampling.build(seed=3, n=4, temperature=None)
    assert (s.n, s.max_tokens, s.temperature, s.seed, s.stop) == (4, 64, 0.7, 3, ())


def test_missing_spec_file(tmp_path):
    assert "spec file not found" in error_of(load_spec, tmp_path / "nope.yaml")


def test_unknown_top_level_key_names_it(tmp_path):
    msg = error_of(load_spec, spec_file(tmp_path, SPEC + "stagez: []\n"))
    assert "stagez: unknown key" in msg
    assert str(tmp_path / "spec.yaml") in msg


@pytest.mark.parametrize(
    "path, edit",
    [
        ("stages.1.resources.foo", lambda t: t["stages"][1]["resources"].update(foo=1)),
        ("stages.0.paramz", lambda t: t["stages"][0].update(paramz={})),
        ("model.temprature", lambda t: t["model"].update(temprature=1)),
        ("sampling.nn", lambda t: t["sampling"].update(nn=1)),
        ("input.paths", lambda t: t["input"].update(paths=["x"])),
    ],
)
def test_unknown_nested_key_names_its_path(path, edit):
    t = tree()
    edit(t)
    assert f"{path}: unknown key" in error_of(validate, t, "my.yaml")


def test_unknown_param_key_is_caught_by_the_stage_params():
    t = tree()
    t["stages"][2]["params"]["min_charz"] = 3
    msg = error_of(validate, t)
    assert "stages.2.params" in msg and "min_charz" in msg and "unknown key" in msg


def test_unknown_stage_name_says_where_and_did_you_mean():
    t = tree()
    t["stages"][1]["name"] = "genrate"
    msg = error_of(validate, t, "my.yaml")
    assert "my.yaml: stages.1.name" in msg
    assert "did you mean 'generate'" in msg


def test_unimportable_stage_class_path_is_a_spec_error():
    t = tree()
    t["stages"][0]["name"] = "no_such_pkg.mod:Thing"
    msg = error_of(validate, t)
    assert "stages.0.name" in msg and "cannot import" in msg


def test_stage_named_by_import_path_resolves():
    t = tree()
    t["stages"][2]["name"] = "alignfactory.stages.assemble.filter:Filter"
    spec = validate(t)
    assert isinstance(spec.stage_params(2), Filter.Params)


def test_bad_param_type_names_stage_params_and_field():
    t = tree()
    t["stages"][1]["params"]["n"] = "many"
    msg = error_of(validate, t, "my.yaml")
    assert "stages.1.params" in msg
    assert ".n:" in msg
    assert "integer" in msg


def test_out_of_range_value_is_an_error():
    t = tree()
    t["stages"][1]["resources"]["batch_size"] = 0
    assert "stages.1.resources.batch_size" in error_of(validate, t)
    assert "name" in error_of(validate, tree(name="has space"))
    assert "stages" in error_of(validate, tree(stages=[]))


def test_yaml_syntax_error_has_file_and_line(tmp_path):
    text = "name: demo\ninput:\n  path: x\nstages:\n  - name: dedup\n    params: {n: [1, 2}\n"
    msg = error_of(load_spec, spec_file(tmp_path, text))
    assert f"{tmp_path / 'spec.yaml'}:6:" in msg
    assert "YAML syntax error" in msg


def test_top_level_must_be_a_mapping(tmp_path):
    assert "mapping" in error_of(load_spec, spec_file(tmp_path, "- a\n- b\n"))


# ---- --set ------------------------------------------------------------------------------------


def test_apply_set_parses_values_as_yaml():
    t = tree()
    apply_set(t, "input.path=other.jsonl")
    apply_set(t, "stages.1.params.n=4")
    apply_set(t, "sampling.temperature=0")
    apply_set(t, "stages.0.params.on=conversation")  # creates the missing params mapping
    apply_set(t, "limit=")
    apply_set(t, "input.max_line_bytes=1024")
    assert t["input"]["path"] == "other.jsonl"
    assert t["stages"][1]["params"]["n"] == 4 and isinstance(t["stages"][1]["params"]["n"], int)
    assert t["sampling"]["temperature"] == 0
    assert t["stages"][0]["params"] == {"on": "conversation"}
    assert t["limit"] == ""
    apply_set(t, "input.path=[a.jsonl, b.jsonl]")
    assert t["input"]["path"] == ["a.jsonl", "b.jsonl"]
    apply_set(t, "stages.3={name: filter}")  # replace a list element
    assert t["stages"][3] == {"name": "filter"}


@pytest.mark.parametrize(
    "assignment, needle",
    [
        ("stages.9.params.n=4", "stages.9: no such list index (length 4)"),
        ("stages.x.params.n=4", "stages.x: no such list index"),
        ("stages.-1.name=dedup", "no such list index"),
        ("seed.value=1", "seed is a value, not a mapping"),
        ("no_equals_sign", "expected key.path=value"),
        ("=5", "expected key.path=value"),
    ],
)
def test_apply_set_errors(assignment, needle):
    assert needle in error_of(apply_set, tree(), assignment)


def test_load_spec_sets_are_applied_before_validation(tmp_path):
    spec = load_spec(spec_file(tmp_path), sets=["input.path=other.jsonl", "stages.1.params.n=4"])
    assert spec.input.path == "other.jsonl"
    assert spec.stage_params(1).n == 4
    msg = error_of(load_spec, spec_file(tmp_path), sets=["stages.1.params.n=many"])
    assert "stages.1.params" in msg and ".n:" in msg
    assert "no such list index" in error_of(load_spec, spec_file(tmp_path), sets=["stages.4.name=x"])


def test_cli_overrides_limit_output_model_backend(tmp_path):
    spec = load_spec(spec_file(tmp_path), limit=5, output="/tmp/out", model="/models/tiny", backend="openai")
    assert spec.limit == 5
    assert spec.output == "/tmp/out"
    assert spec.model.path == "/models/tiny"
    assert spec.model.backend == "openai"
    plain = load_spec(spec_file(tmp_path), limit=None, output=None, model=None, backend=None)
    assert (plain.limit, plain.output, plain.model.path, plain.model.backend) == (
        None,
        None,
        None,
        "transformers",
    )


def test_cli_model_override_works_when_yaml_model_is_null(tmp_path):
    text = SPEC.replace("model:\n  backend: transformers\n", "model:\n")
    spec = load_spec(spec_file(tmp_path, text), model="/m", backend="vllm")
    assert (spec.model.path, spec.model.backend) == ("/m", "vllm")
    assert load_spec(spec_file(tmp_path, text)).model.backend == "auto"


def test_cli_limit_is_validated():
    # a limit of 0 would read nothing; the spec rejects it rather than running an empty pipeline
    with pytest.raises(SpecError, match="limit"):
        validate(tree(limit=0))


def test_apply_set_under_a_null_mapping():
    t = tree(model=None)
    apply_set(t, "model.backend=vllm")
    assert t["model"] == {"backend": "vllm"}


def test_a_bare_on_key_is_the_word_on_not_true(tmp_path):
    # YAML 1.1 reads `on:` as the boolean True; a stage param named `on` must still validate
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: s\ninput: {path: x.jsonl}\nstages:\n"
        "  - name: decontaminate\n    params:\n      on: response\n      benchmarks: []\n"
    )
    (tmp_path / "x.jsonl").write_text('{"instruction": "a"}\n')
    loaded = load_spec(spec)
    assert loaded.stage_params(0).on == "response"
