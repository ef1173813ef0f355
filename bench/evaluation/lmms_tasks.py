"""lmms-eval tasks on a local copy of their data: an ``--include_path`` folder that includes lmms-eval's own task
and overrides only where the data is.

``write_local_task("videomme", DIR, OUT)`` writes ``OUT/videomme_local.yaml``: lmms-eval's ``videomme.yaml``
(its prompt, generation settings, answer extraction and scoring) with ``dataset_path: parquet``, the
annotation file under ``DIR`` as ``data_files``, and ``doc_to_visual`` reading the videos from
``DIR/data`` (lmms-eval's own looks under ``$HF_HOME/videomme``). ``DIR`` is the layout
``viperbench eval --task videomme --data DIR`` reads, so the two runs see the same files.
"""

from __future__ import annotations

from pathlib import Path

from bench.errors import UserError

# task -> (lmms-eval's task file under lmms_eval/tasks, the annotation file under DIR, its split). Not
# ``videomme_w_subtitle``: its prompt reads the subtitles from lmms-eval's cache folder, not from the document.
LOCAL_TASKS = {
    "videomme": ("videomme/videomme.yaml", "videomme/test-00000-of-00001.parquet", "test"),
}

VISUALS = '''"""Where {task}_local finds its videos (written by viperbench's write_local_task)."""

from pathlib import Path

from tasks.videomme import video_path

ROOT = Path({root!r})


def doc_to_visual(doc):
    return [video_path(ROOT, doc["videoID"])]
'''


def write_local_task(task: str, data_dir: str, out_dir: str) -> Path:
    """Write ``{task}_local`` (a YAML and its ``doc_to_visual``) under ``out_dir``; returns the YAML's path."""
    import lmms_eval

    if task not in LOCAL_TASKS:
        raise UserError(f"no local lmms-eval task {task!r}; known: {', '.join(LOCAL_TASKS)}")
    source, annotations, split = LOCAL_TASKS[task]
    root = Path(data_dir).resolve()
    if not (root / annotations).is_file():
        raise UserError(f"{task} annotation file not found: {root / annotations}")
    included = Path(lmms_eval.__file__).parent / "tasks" / source
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{task}_local"
    (out / f"{name}_videos.py").write_text(VISUALS.format(task=task, root=str(root)))
    yaml = out / f"{name}.yaml"
    yaml.write_text(f"include: {included}\n"
                    f"task: {name}\n"
                    "dataset_path: parquet\n"
                    "dataset_kwargs:\n"
                    "  data_files:\n"
                    f"    {split}: {root / annotations}\n"
                    f"doc_to_visual: !function {name}_videos.doc_to_visual\n")
    return yaml
