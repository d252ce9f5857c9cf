"""The front page stays true: its quick start is what CI runs, its headline command is the sweep
study-all runs (so their jobs are shared), and every link of the README and docs/ resolves."""

from __future__ import annotations

import re
import shlex

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from prunelab import resume
from prunelab.study import study_all
from tests.conftest import CONF_DIR, ROOT

README = ROOT / "README.md"
# Pages other engineers are writing; the README links them already (dangling until merged).
PENDING = {"docs/compression.md", "docs/gguf_llamacpp.md", "docs/big_models.md", "docs/cluster.md", "docs/report.md"}


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def commands(text: str) -> list[str]:
    """The commands of the ```bash blocks in ``text``, comments dropped."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        found += [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]
    return found


def test_the_quick_start_is_exactly_what_ci_runs():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert commands(section(README.read_text(), "Quick start")) == ci == ["make setup", "python run.py", "make test-all"]


def test_the_headline_command_is_study_alls_sparsity_curve_job_for_job():
    """The README's headline and study-all's sparsity curve write the same jobs (same fingerprint,
    same directory): whichever runs second finds every job completed."""
    row = next(line for line in section(README.read_text(), "Homework map").splitlines() if "(the headline)" in line)
    headline = shlex.split(re.search(r"`python run\.py ([^`]*)`", row).group(1))
    ours = next(c for c in study_all.commands(quick=False) if "+experiment=sparsity_curve" in c)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        def jobs(arguments: list[str]) -> list[tuple[str, str]]:
            base = compose(config_name="config", overrides=arguments, return_hydra_config=True)
            grid = [(m, s) for m in base.hydra.sweeper.params.method.split(",")
                    for s in base.hydra.sweeper.params.sparsity.split(",")]
            out = []
            for method, sparsity in grid:
                job = compose(config_name="config", overrides=[*arguments, f"method={method}", f"sparsity={sparsity}"],
                              return_hydra_config=True)
                task = OmegaConf.to_container(job, resolve=False)
                task.pop("hydra")  # what a job sees: the config without Hydra's node
                out.append((resume.fingerprint(OmegaConf.to_container(OmegaConf.create(task), resolve=True)),
                            job.hydra.sweep.dir))
            return out

        readme_jobs, study_all_jobs = jobs(headline), jobs(ours)
    assert len(readme_jobs) == 12 and readme_jobs == study_all_jobs


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_of_the_readme_and_docs_resolves():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if str(file.relative_to(ROOT)) in PENDING:
                continue
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and anchor not in {slug(h) for h in re.findall(r"^#+ (.*)$", file.read_text(), flags=re.M)}:
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
    assert len(README.read_text().splitlines()) <= 150  # a front page, the rest in docs/
