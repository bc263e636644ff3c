"""The offline proof: the lmms-eval command line scores a trained laco model on easy-VQA exactly as `laco eval` does.

`lmms-eval --model laco` (found through laco's entry point) runs the local easy-VQA tasks; its exact match on the
first N test questions equals `laco eval --limit N`'s, answer for answer, both scored with
`laco.evaluate.normalize_answer`. The colour multiple-choice task goes through `loglikelihood`; its accuracy equals
a direct computation: for each question, the colour name the model gives the highest log-probability, from one
unpadded forward pass per choice.
"""

import json
import subprocess
import sys

import torch

from laco.cli import main
from laco.evaluate import load_model
from laco.harness import write_easyvqa_tasks
from laco.harness.easyvqa_task import doc_to_visual

N, BATCH = 48, 16
COLOURS = ["black", "blue", "brown", "gray", "green", "red", "teal", "yellow"]


def _lmms_eval(checkpoint, tasks_dir, output, env):
    command = [
        sys.executable, "-m", "lmms_eval", "--model", "laco", "--model_args", f"pretrained={checkpoint}",
        "--tasks", "easyvqa,easyvqa_colour_mc", "--include_path", str(tasks_dir), "--limit", str(N),
        "--batch_size", str(BATCH), "--output_path", str(output), "--log_samples",
    ]  # fmt: skip
    process = subprocess.run(command, env=env, cwd=output.parent, capture_output=True, text=True, timeout=900)
    log = process.stdout[-4000:] + process.stderr[-4000:]
    # lmms-eval's command line logs an evaluation error and still exits 0: look for its results file too
    assert process.returncode == 0 and "Error during evaluation" not in process.stdout, log
    (results_file,) = output.rglob("*_results.json")
    samples = {}
    for name in ("easyvqa", "easyvqa_colour_mc"):
        (samples_file,) = output.rglob(f"*_samples_{name}.jsonl")
        samples[name] = {row["doc_id"]: row for row in map(json.loads, samples_file.read_text().splitlines())}
    return json.loads(results_file.read_text()), samples, process.stdout + process.stderr


def _answer(sample) -> str:
    """The answer lmms-eval scored (its sample log keeps a one-answer list or the answer itself)."""
    response = sample["filtered_resps"]
    return response[0] if isinstance(response, list) else response


def _direct_colour_choice(model, processor, document) -> str:
    image = doc_to_visual(document)[0]
    prompt = processor([document["question"]], [image])
    scores = []
    for colour in COLOURS:
        target = processor.tokenizer(colour, add_special_tokens=False)["input_ids"]
        ids = torch.cat([prompt["input_ids"], torch.tensor([target])], dim=1)
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids, pixel_values=prompt["pixel_values"]).logits[0], -1)
        start = prompt["input_ids"].shape[1]
        scores.append(sum(float(log_probs[start - 1 + i, token]) for i, token in enumerate(target)))
    return COLOURS[max(range(len(COLOURS)), key=scores.__getitem__)]


def test_lmms_eval_agrees_with_laco_eval(easyvqa_checkpoint, lmms_env, tmp_path):
    tasks_dir = write_easyvqa_tasks(tmp_path / "tasks")
    results, samples, output = _lmms_eval(easyvqa_checkpoint, tasks_dir, tmp_path / "lmms", lmms_env)
    assert "laco generate_until" in output and "laco loglikelihood" in output  # the plugin's progress bars

    laco_json = tmp_path / "laco.json"
    assert main(["eval", "--model", str(easyvqa_checkpoint), "--limit", str(N), "--batch-size", str(BATCH),
                 "--output", str(laco_json)]) == 0  # fmt: skip
    laco = json.loads(laco_json.read_text())
    assert results["n-samples"]["easyvqa"]["effective"] == laco["total"] == N
    assert results["results"]["easyvqa"]["exact_match,none"] == laco["accuracy"]
    assert laco["accuracy"] > 0  # the tiny model learned something, so the agreement is not 0 == 0
    assert [_answer(samples["easyvqa"][i]) for i in range(N)] == [p["prediction"] for p in laco["predictions"]]

    colour_docs = [json.loads(line) for line in (tasks_dir / "easyvqa" / "easyvqa_colour_test.jsonl").open()][:N]
    model, processor = load_model(easyvqa_checkpoint)
    hits = [_direct_colour_choice(model, processor, doc) == doc["answer"] for doc in colour_docs]
    assert [samples["easyvqa_colour_mc"][i]["acc"] for i in range(N)] == [float(hit) for hit in hits]
    assert results["results"]["easyvqa_colour_mc"]["acc,none"] == sum(hits) / N
