"""The tool_use task's SFT demos: the chat turns render to exactly the one-text transcript, and trained
with train_on="assistant" the calculator's reply is context, not a target."""
import json

from rlhf.data.collate import IGNORE_INDEX
from rlhf.data.sft import SFTDataset
from rlhf.models.tiny import build_tiny_tokenizer
from rlhf.tasks import get_task


def test_demo_turns_render_to_the_transcript_and_train_only_on_the_policys_turns(tmp_path):
    tok = build_tiny_tokenizer(tmp_path / "tok")
    task = get_task("tool_use", num_train_prompts=40, num_eval_prompts=8, sft_direct_prob=0.5, seed=3)
    rows = task.sft_rows()
    assert {r["uses_tool"] for r in rows} == {True, False}
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    turns = SFTDataset(path, tok, train_on="assistant", cache_dir=str(tmp_path / "cache"))
    texts = [{"prompt": r["prompt"], "response": r["response"]} for r in rows]
    (tmp_path / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in texts))
    text = SFTDataset(tmp_path / "text.jsonl", tok, cache_dir=str(tmp_path / "cache"))
    for row, a, b in zip(rows, turns, text):
        assert a.input_ids == b.input_ids  # the same tokens as the one-text transcript + EOS
        reply = f"={row['answer']} "
        untrained = [t for t, label in zip(a.input_ids[a.prompt_len:], a.labels[a.prompt_len:]) if label == IGNORE_INDEX]
        assert tok.decode(untrained) == (reply if row["uses_tool"] else "")  # only the calculator's reply is context
