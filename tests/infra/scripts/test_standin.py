"""The stand-in's own reading of a template's parameters (tests/stubs/standin.py adds them to
moto's validate-template answer), against cfn-lint's decoder, for every template in cfn/."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.infra.cfn import load_path
from tests.support import REPO_ROOT

TEMPLATES = sorted((REPO_ROOT / "cfn").rglob("*.yaml"))


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # As the stand-in runs: a script in tests/stubs, importing its neighbour awsfork.
    monkeypatch.syspath_prepend(str(REPO_ROOT / "tests" / "stubs"))
    return importlib.import_module("standin")


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_parameters_are_read_as_cfn_lint_reads_them(standin: ModuleType, template: Path) -> None:
    expected = load_path(template).get("Parameters") or {}
    assert expected, "every template here takes parameters"
    assert standin.template_parameters(template) == expected


def test_a_file_that_is_not_a_yaml_template_has_no_parameters(
    standin: ModuleType, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("Parameters: [unclosed\n")
    assert standin.template_parameters(broken) is None
    undecodable = tmp_path / "latin1.yaml"
    undecodable.write_bytes("Description: caf\xe9\n".encode("latin-1"))
    assert standin.template_parameters(undecodable) is None
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    assert standin.template_parameters(listed) is None
    empty = tmp_path / "empty.yaml"
    empty.write_text("Resources:\n  Handle: {Type: AWS::CloudFormation::WaitConditionHandle}\n")
    assert standin.template_parameters(empty) == {}


def test_validate_template_lists_parameters_as_cloudformation_does(
    standin: ModuleType, tmp_path: Path
) -> None:
    template = tmp_path / "t.yaml"
    template.write_text(
        "Parameters:\n"
        "  Plain: {Type: String}\n"
        "  Secret: {Type: String, NoEcho: true}\n"
        '  Quoted: {Type: String, NoEcho: "false", Default: "x"}\n'
        '  QuotedTrue: {Type: String, NoEcho: "True"}\n'
        "  Flag: {Type: String, Default: true}\n"
        "  Size: {Type: Number, Default: 2}\n"
    )
    answer = standin.with_template_parameters('{"Parameters": []}', template)
    assert json.loads(answer)["Parameters"] == [
        {"ParameterKey": "Plain", "NoEcho": False},
        {"ParameterKey": "Secret", "NoEcho": True},
        {"ParameterKey": "Quoted", "NoEcho": False, "DefaultValue": "x"},
        {"ParameterKey": "QuotedTrue", "NoEcho": True},
        {"ParameterKey": "Flag", "NoEcho": False, "DefaultValue": "true"},
        {"ParameterKey": "Size", "NoEcho": False, "DefaultValue": "2"},
    ]
