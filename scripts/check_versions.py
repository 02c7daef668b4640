"""Run the suite against other dependency versions than constraints.txt pins, so drift is found by us, not by users.

    python scripts/check_versions.py latest     # the newest release of every dependency inside pyproject's ranges
    python scripts/check_versions.py lowest     # every direct dependency at its declared lower bound
    python scripts/check_versions.py latest -- tests/test_sampling.py -x     # pytest arguments after --

Each mode builds a throwaway virtual environment in a temporary folder (kept with --keep), installs this checkout
with the `dev` extra and torch from --torch (this machine's CPU build by default), runs pytest there, and prints
which installed versions differ from constraints.txt. The exit status is pytest's. Needs the package registry.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """{name: version} of `name==version` lines (constraints.txt, pip freeze)."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        if match:
            found[normalise(match.group(1))] = match.group(2).split("+")[0]
    return found


def lower_bounds(torch_pin: str) -> list[str]:
    """`name==floor` for every direct dependency of the package and its extras that declares `>=floor`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += [r for r in extra if not r.startswith(project["name"])]
    floors = {}
    for requirement in requirements:
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)", requirement)
        if not match or normalise(match.group(1)) == "torch":
            continue
        name, floor = normalise(match.group(1)), match.group(2)
        # a package named twice (plotly: the core and the notebooks extra) takes its higher floor
        if name not in floors or Version(floor) > Version(floors[name]):
            floors[name] = floor
    return [f"{name}=={version}" for name, version in sorted(floors.items())] + [torch_pin]


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=False, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["latest", "lowest"])
    parser.add_argument("--torch", default="torch==2.13.0", help="the torch requirement to install first "
                        "(default torch==2.13.0, this machine's CPU build)")
    parser.add_argument("--keep", action="store_true", help="keep the virtual environment and print its path")
    argv = sys.argv[1:] if argv is None else argv
    # everything after -- goes to pytest untouched (argparse would read pytest's own options as ours)
    ours, pytest_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser.epilog = "arguments after -- go to pytest (default: the whole suite)"
    args = parser.parse_args(ours)

    folder = Path(tempfile.mkdtemp(prefix=f"dlm-explorer-{args.mode}-"))
    venv = folder / "venv"
    python = venv / "bin" / "python"
    try:
        if run([sys.executable, "-m", "venv", str(venv)]).returncode:
            return 1
        pip = [str(python), "-m", "pip", "install", "--quiet", "--upgrade-strategy", "eager"]
        if args.mode == "lowest":
            floors = folder / "lowest.txt"
            floors.write_text("\n".join(lower_bounds(args.torch)) + "\n")
            print(f"lower bounds:\n{floors.read_text()}")
            pip += ["-c", str(floors)]
        if run(pip + [args.torch]).returncode or run(pip + ["-e", f"{ROOT}[dev]"]).returncode:
            print("install failed: the declared ranges cannot be installed together", file=sys.stderr)
            return 1
        if shutil.which("chromium") is None and not Path("/usr/bin/chromium").exists():
            run(["bash", str(ROOT / "scripts" / "install_chromium.sh")])
        frozen = run([str(python), "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True).stdout
        tested = pins((ROOT / "constraints.txt").read_text())
        installed = pins(frozen)
        changed = {name: (tested.get(name), installed.get(name)) for name in sorted(set(tested) | set(installed))
                   if tested.get(name) != installed.get(name)}
        print(f"\n{len(changed)} packages differ from constraints.txt (constraints -> {args.mode}):")
        for name, (before, after) in changed.items():
            print(f"  {name}: {before or '-'} -> {after or '-'}")
        result = run([str(venv / "bin" / "pytest"), "-p", "no:cacheprovider", *pytest_args], cwd=ROOT)
        print(f"\n{args.mode}: pytest exited {result.returncode}; {len(changed)} packages differ from constraints.txt")
        return result.returncode
    finally:
        if args.keep:
            print(f"kept {venv}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
