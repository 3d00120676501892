"""Routing rules from outside capsjax: installed entry points and plugin modules, through train,
eval and resume in separate processes; bad plugins; `capsjax rules`."""

import importlib.metadata
import json
import runpy
import sys
from pathlib import Path

import pytest

from capsjax import cli, routing
from capsjax.train.config import TrainConfig
from capsjax.routing import registry
from conftest import TINY_MODEL_ARGS, run_cli

EVAL = ["--test-examples", "16", "--no-progress"]
RUN = ["--batch-size", "8", "--train-examples", "32", "--test-examples", "16",
       "--checkpoint-every", "2", "--no-progress", *TINY_MODEL_ARGS]

# Dynamic routing with a learnable per-class sharpness of the couplings: an option and a
# parameter, so both travel through the checkpoint.
RULE_MODULE = '''"""Sharpened dynamic routing (a capsjax test plugin)."""

import jax
import jax.numpy as jnp

import capsjax


def _sharpness(key, num_in, num_out, dim):
  return {{"log_sharpness": jnp.zeros((num_out,))}}


@capsjax.routing.register({rule!r}, init_params=_sharpness{extra})
def sharp(u_hat, *, num_iters=3, log_sharpness=None, temperature=1.0):
  """u_hat [N_in, N_out, D] -> RoutingResult(v [N_out, D], c [N_in, N_out])."""
  capsjax.routing.check_votes(u_hat, num_iters)
  b = jnp.zeros(u_hat.shape[:2], u_hat.dtype)
  for _ in range(num_iters):
    c = jax.nn.softmax(b * jnp.exp(log_sharpness) / temperature, axis=-1)
    v = capsjax.squash(jnp.einsum("ij,ijd->jd", c, u_hat))
    b = b + jnp.einsum("ijd,jd->ij", u_hat, v)
  return capsjax.routing.RoutingResult(v=v, c=c)
'''


def write_module(folder: Path, module: str, rule: str | None = None, text: str = "",
                 extra: str = "") -> None:
  """folder/module.py: a plugin registering `rule` (the sharpened rule), or `text` as given."""
  source = RULE_MODULE.format(rule=rule, extra=extra) if rule else text
  (folder / f"{module}.py").write_text(source)


def install(folder: Path, dist: str, entry_points: dict[str, str]) -> None:
  """A distribution `dist` 0.1 "installed" in `folder` (a dist-info that importlib.metadata finds
  on sys.path, as pip would write it) with these "capsjax.routing" entry points."""
  info = folder / f"{dist.replace('-', '_')}-0.1.dist-info"
  info.mkdir()
  (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
  lines = [f"{name} = {value}" for name, value in entry_points.items()]
  (info / "entry_points.txt").write_text("\n".join(["[capsjax.routing]", *lines, ""]))


@pytest.fixture
def site(tmp_path, monkeypatch):
  """A folder on sys.path for plugin modules and installed distributions, with the registry as a
  fresh process has it (entry points not yet loaded); everything is put back afterwards."""
  folder = tmp_path / "site"
  folder.mkdir()
  monkeypatch.setattr(registry, "_RULES", dict(registry._RULES))
  monkeypatch.setattr(registry, "_plugin_modules", [])
  monkeypatch.setattr(registry, "_entry_points_loaded", False)
  monkeypatch.setattr(registry, "_plugin_error", None)
  monkeypatch.syspath_prepend(str(folder))
  yield folder
  for name in [m for m in sys.modules if m.startswith("plug_")]:
    del sys.modules[name]


def last_json(proc) -> dict:
  assert proc.returncode == 0, proc.stderr
  return json.loads(proc.stdout.strip().splitlines()[-1])


def one_error_line(err: str) -> str:
  lines = [l for l in err.strip().splitlines() if l.startswith("capsjax:")]
  assert len(lines) == 1 and "Traceback" not in err, err
  return lines[0]


# End to end: train, eval, resume, each a fresh `python -m capsjax.cli` process.

def test_installed_entry_point_plugin_trains_evaluates_and_resumes(tmp_path, cli_env):
  site = tmp_path / "site"
  site.mkdir()
  write_module(site, "plug_installed", "sharp_installed")
  install(site, "plug-installed", {"sharp": "plug_installed"})
  env = {**cli_env, "PYTHONPATH": str(site)}
  workdir = tmp_path / "run"
  args = ["train", "--workdir", str(workdir), "--routing", "sharp_installed",
          "--routing-option", "temperature=2.0", *RUN]
  assert last_json(run_cli(*args, "--max-steps", "2", env=env))["step"] == 2
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["routing"] == "sharp_installed"
  assert saved["config"]["plugins"] == []  # an installed plugin is found without being named

  evaluated = last_json(run_cli("eval", "--workdir", str(workdir), *EVAL, env=env))
  assert evaluated["step"] == 2 and evaluated["test_examples"] == 16

  resumed = run_cli(*args, "--max-steps", "3", env=env)
  assert last_json(resumed)["step"] == 3
  assert "Resuming from checkpoint at step 2" in resumed.stdout
  assert "Note: training settings changed" not in resumed.stdout


def test_plugin_module_on_pythonpath_trains_evaluates_and_resumes(tmp_path, cli_env):
  folder = tmp_path / "mods"
  folder.mkdir()
  write_module(folder, "plug_local", "sharp_local")
  env = {**cli_env, "PYTHONPATH": str(folder)}
  workdir = tmp_path / "run"
  train = ["train", "--workdir", str(workdir), *RUN]
  first = run_cli(*train, "--routing", "plug_local:sharp_local", "--max-steps", "2", env=env)
  assert last_json(first)["step"] == 2
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["config"]["routing"] == saved["model"]["routing"] == "sharp_local"
  assert saved["config"]["plugins"] == ["plug_local"]

  # A fresh process imports the module the run recorded: no flags needed.
  evaluated = last_json(run_cli("eval", "--workdir", str(workdir), *EVAL, env=env))
  assert evaluated["step"] == 2

  # --plugin MODULE --routing NAME is the same run as --routing MODULE:NAME.
  resumed = run_cli(*train, "--plugin", "plug_local", "--routing", "sharp_local",
                    "--max-steps", "3", env=env)
  assert last_json(resumed)["step"] == 3
  assert "Resuming from checkpoint at step 2" in resumed.stdout
  assert "Note: training settings changed" not in resumed.stdout

  missing = run_cli("eval", "--workdir", str(workdir), "--no-progress",
                    env={**cli_env, "PYTHONPATH": ""})
  assert missing.returncode == 2
  assert one_error_line(missing.stderr) == (
      "capsjax: error: the checkpoint's config cannot be used: routing plugin module "
      "'plug_local' not found (no module named 'plug_local'): install it or put its folder on "
      "PYTHONPATH.")


def test_broken_entry_point_warns_in_one_line_and_the_other_rules_load(tmp_path):
  site = tmp_path / "site"
  site.mkdir()
  write_module(site, "plug_good", "sharp_good")
  write_module(site, "plug_broken", text="import capsjax_no_such_dependency\n")
  install(site, "plug-good", {"good": "plug_good"})
  install(site, "plug-broken", {"broken": "plug_broken"})
  proc = run_cli("rules", "--json", env={"PYTHONPATH": str(site)})
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      "capsjax: warning: routing plugin entry point 'broken' of plug-broken 0.1 (plug_broken) "
      "failed to import and is skipped: ModuleNotFoundError: No module named "
      "'capsjax_no_such_dependency'"]
  rules = json.loads(proc.stdout)["rules"]
  assert {"dynamic", "em", "sharp_good"} <= set(rules)


# The registry's loading, in this process (the `site` fixture isolates it).

def test_entry_points_load_on_the_first_lookup_and_only_once(site, monkeypatch):
  write_module(site, "plug_a", "sharp_a")
  install(site, "plug-a", {"a": "plug_a:sharp"})  # an object entry point: its module registers
  scans = []
  find = registry._entry_points
  monkeypatch.setattr(registry, "_entry_points", lambda: scans.append(1) or find())
  routing.register("mine")(lambda u_hat, *, num_iters: None)  # registering is no lookup
  assert scans == [] and "plug_a" not in sys.modules
  assert "sharp_a" in routing.available()
  routing.get("sharp_a"), routing.info("dynamic"), routing.check_options("sharp_a", {})
  routing.available()
  assert scans == [1]
  assert routing.info("sharp_a").source == "entry point 'a' of plug-a 0.1"


def test_broken_entry_point_is_skipped_with_a_warning_and_its_rules_removed(site):
  write_module(site, "plug_good", "sharp_good")
  write_module(site, "plug_half", text=(
      "import capsjax\n"
      "capsjax.routing.register('half')(lambda u_hat, *, num_iters: None)\n"
      "raise RuntimeError('half way')\n"))
  install(site, "plug-good", {"good": "plug_good"})
  install(site, "plug-half", {"half": "plug_half"})
  with pytest.warns(routing.RoutingPluginWarning, match=(
      r"^routing plugin entry point 'half' of plug-half 0.1 \(plug_half\) failed to import and "
      r"is skipped: RuntimeError: half way$")):
    names = routing.available()
  assert "sharp_good" in names and "half" not in names


def test_two_installed_plugins_with_one_rule_name(site, capsys):
  for dist in ("x", "y"):
    write_module(site, f"plug_{dist}", "same")
    install(site, f"plug-{dist}", {dist: f"plug_{dist}"})
  assert cli.main(["rules"]) == 2
  line = one_error_line(capsys.readouterr().err)
  assert line.startswith("capsjax: error: routing rule 'same' is already registered by entry "
                         "point '")
  assert "'x' of plug-x 0.1 (plug_x.sharp)" in line and "'y' of plug-y 0.1" in line
  assert "registers another one" in line and "remove one plugin" in line
  with pytest.raises(routing.DuplicateRuleError):  # every later lookup fails the same way
    routing.info("dynamic")


BAD_PLUGINS = {
    "import path to a missing module": (
        ["--routing", "plug_missing:sharp"],
        "routing plugin module 'plug_missing' not found (no module named 'plug_missing'): install "
        "it or put its folder on PYTHONPATH."),
    "missing package of a dotted module": (
        ["--plugin", "plug_missing.rules"],
        "routing plugin module 'plug_missing.rules' not found (no module named 'plug_missing')"),
    "import path to a module without that rule": (
        ["--routing", "plug_m:nope"],
        "unknown routing rule 'nope'; available: dynamic, em, inverted_dot_product, "
        "self_attention, sharp_m, uniform. Plugin module 'plug_m' registers: sharp_m."),
    "module that fails to import": (
        ["--plugin", "plug_failing"],
        "routing plugin module 'plug_failing' failed to import: ModuleNotFoundError: No module "
        "named 'capsjax_no_such_dependency'"),
    "not a module name": (["--plugin", "plug-m.py"],
                          "routing plugin 'plug-m.py' is not a module name"),
    "module taking a built-in's name": (
        ["--plugin", "plug_clash"],
        "routing rule 'dynamic' is already registered by built-in "
        "(capsjax.routing.dynamic.dynamic_routing); module plug_clash registers another one "
        "(plug_clash.sharp)"),
    "module taking an installed plugin's name": (
        ["--plugin", "plug_other", "--routing", "sharp_installed"],
        "routing rule 'sharp_installed' is already registered by entry point 'sharp' of "
        "plug-installed 0.1 (plug_installed.sharp); module plug_other registers another one"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLUGINS))
def test_bad_plugin_gives_one_line(case, site, tmp_path, capsys):
  write_module(site, "plug_m", "sharp_m")
  write_module(site, "plug_failing", text="import capsjax_no_such_dependency\n")
  write_module(site, "plug_clash", "dynamic")
  if case == "module taking an installed plugin's name":
    write_module(site, "plug_installed", "sharp_installed")
    install(site, "plug-installed", {"sharp": "plug_installed"})
    write_module(site, "plug_other", "sharp_installed")
  flags, message = BAD_PLUGINS[case]
  assert cli.main(["train", "--workdir", str(tmp_path / "w"), "--max-steps", "2", *flags]) == 2
  assert message in one_error_line(capsys.readouterr().err)
  assert not (tmp_path / "w").exists()


def test_eval_plugin_flag_names_a_missing_module(site, tmp_path, capsys, data_dir):
  (tmp_path / "w").mkdir()
  argv = ["eval", "--workdir", str(tmp_path / "w"), "--data-dir", data_dir]
  assert cli.main([*argv, "--plugin", "plug_missing"]) == 2
  assert one_error_line(capsys.readouterr().err) == (
      "capsjax: error: routing plugin module 'plug_missing' not found (no module named "
      "'plug_missing'): install it or put its folder on PYTHONPATH.")


def test_entry_point_without_distribution_metadata_is_named_by_its_value():
  entry_point = importlib.metadata.EntryPoint("x", "plug_x.rules", routing.ENTRY_POINT_GROUP)
  assert registry._entry_point_source(entry_point) == "entry point 'x' of plug_x.rules"


def test_same_definition_run_as_a_script_then_imported_is_no_duplicate(site):
  write_module(site, "plug_script", "sharp_script")
  runpy.run_path(str(site / "plug_script.py"), run_name="__main__")  # python plug_script.py
  routing.load_plugins(["plug_script"])  # ... which then names itself as the plugin
  assert routing.info("sharp_script").source == "module plug_script"
  (site / "plug_copy.py").write_text((site / "plug_script.py").read_text())
  with pytest.raises(routing.DuplicateRuleError, match="'sharp_script' is already registered"):
    routing.load_plugins(["plug_copy"])  # same code, another file: another plugin


def test_import_path_in_the_config():
  config = TrainConfig(routing="my_package.my_rules:tempered", plugins=["other"])
  assert (config.routing, config.plugins) == ("tempered", ["other", "my_package.my_rules"])
  again = TrainConfig(routing="my_package.my_rules:tempered", plugins=["my_package.my_rules"])
  assert again.plugins == ["my_package.my_rules"]
  assert TrainConfig().plugins == [] and TrainConfig().routing == "dynamic"


# `capsjax rules`

def test_rules_json_lists_options_parameters_iterations_and_papers(capsys):
  assert cli.main(["rules", "--json"]) == 0
  rules = json.loads(capsys.readouterr().out)["rules"]
  assert {"dynamic", "em", "inverted_dot_product", "self_attention", "uniform"} <= set(rules)
  dynamic = rules["dynamic"]
  assert dynamic["options"] == {"stop_gradient": False, "leaky": False}
  assert dynamic["iterative"] and dynamic["parameters"] == {}
  assert dynamic["source"] == "built-in" and "Sabour, Frosst & Hinton 2017" in dynamic["paper"]
  em = rules["em"]
  assert em["parameters"] == {"beta_a": ["N_out"], "beta_u": ["N_out"]}
  assert em["options"] == {"final_lambda": 0.5, "var_floor": 1e-8, "scale_free_cost": True}
  assert em["uses_activations"] and "ICLR 2018" in em["paper"]
  assert rules["self_attention"]["parameters"] == {"log_prior": ["N_in", "N_out"]}
  assert not rules["self_attention"]["iterative"] and not rules["uniform"]["iterative"]
  assert rules["inverted_dot_product"]["parameters"]["score_weight"] == ["N_out", "D"]


def test_rules_table(capsys):
  assert cli.main(["rules"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].split() == ["rule", "iterative", "options", "(default)", "learnable",
                              "parameters", "from", "paper"]
  rows = {line.split()[0]: line for line in lines[1:]}
  assert {"dynamic", "em", "inverted_dot_product", "self_attention", "uniform"} <= set(rows)
  assert "stop_gradient=False, leaky=False" in rows["dynamic"]
  assert "beta_a [N_out], beta_u [N_out]" in rows["em"] and " yes " in rows["em"]
  assert " one pass " in rows["uniform"] and "built-in" in rows["uniform"]


def test_rules_lists_installed_and_named_plugins(site, capsys):
  write_module(site, "plug_installed", "sharp_installed")
  install(site, "plug-installed", {"sharp": "plug_installed"})
  write_module(site, "plug_named", "sharp_named", extra=", paper='Someone et al. 2031'")
  assert cli.main(["rules", "--json", "--plugin", "plug_named"]) == 0
  rules = json.loads(capsys.readouterr().out)["rules"]
  installed, named = rules["sharp_installed"], rules["sharp_named"]
  assert installed["source"] == "entry point 'sharp' of plug-installed 0.1"
  assert installed["paper"] == "Sharpened dynamic routing (a capsjax test plugin)."
  assert named["source"] == "module plug_named" and named["paper"] == "Someone et al. 2031"
  for rule in (installed, named):
    assert rule["options"] == {"temperature": 1.0}
    assert rule["parameters"] == {"log_sharpness": ["N_out"]} and rule["iterative"]
  assert cli.main(["rules", "--plugin", "plug_named"]) == 0
  assert "module plug_named" in capsys.readouterr().out
