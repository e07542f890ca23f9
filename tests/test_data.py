from pathlib import Path

import pytest

from studykit.data import DataError, load_alpaca, load_chat, load_preferences, load_records, read_jsonl

FIXTURES = Path(__file__).parent / "fixtures"


def test_alpaca_joins_instruction_and_optional_input():
    records = load_alpaca(FIXTURES / "alpaca.json")
    assert [r["response"] for r in records] == ["1. Eat well. 2. Exercise. 3. Sleep.", "Bonjour", "4"]
    assert records[0]["prompt"] == "Give three tips for staying healthy."
    assert records[1]["prompt"] == "Translate to French.\n\nGood morning"
    assert records[2]["input"] == ""


def test_chat_takes_last_assistant_turn_and_keeps_roles_of_longer_prompts():
    records = load_chat(FIXTURES / "chat.jsonl")
    assert records[0] == {"id": "a1", "prompt": "Hello, who are you?", "response": "I am a helpful assistant.",
                          "messages": [{"role": "user", "content": "Hello, who are you?"}]}
    assert records[1]["prompt"] == "system: Be brief.\nuser: Capital of France?"
    assert records[1]["response"] == "Paris."


def test_multi_turn_conversations_keep_their_turns_into_sft():
    """UltraChat-style: the turns before the final answer stay turns (the chat template renders each with its role),
    not one flattened user message."""
    from studykit.trainers import sft_dataset

    record = load_chat(FIXTURES / "chat_multiturn.jsonl")[0]
    assert record["response"] == "11." and [m["role"] for m in record["messages"]] == ["user", "assistant", "user"]
    row = sft_dataset([record], chat=True)[0]
    assert row["prompt"] == record["messages"]
    assert row["completion"] == [{"role": "assistant", "content": "11."}]


def test_preferences_accept_message_lists_and_strings():
    records = load_preferences(FIXTURES / "preferences.jsonl")
    assert [(r["id"], r["chosen"], r["rejected"]) for r in records] == [("p1", "12", "7"), ("p2", "tac", "cat")]
    assert records[0]["prompt"] == "What is 3 * 4?"


@pytest.mark.parametrize("loader, name, expected", [
    (load_alpaca, "alpaca_missing_output.json", r"alpaca_missing_output\.json: item 2: missing field 'output'"),
    (load_preferences, "malformed.jsonl", r"malformed\.jsonl:2: malformed JSON"),
    (load_preferences, "empty.jsonl", r"empty\.jsonl: no examples"),
    (load_preferences, "preferences_bad_role.jsonl", r"line 1: the last message of 'rejected' must have role 'assistant'"),
    (load_chat, "preferences.jsonl", r"line 1: missing field 'messages'"),
    (load_preferences, "preferences_missing_rejected.jsonl",
     r"preferences_missing_rejected\.jsonl: line 1: missing field 'rejected'"),
    (load_alpaca, "does_not_exist.json", r"does_not_exist\.json: file not found"),
])
def test_bad_input_names_file_row_and_field(loader, name, expected):
    with pytest.raises(DataError, match=expected):
        loader(FIXTURES / name)


def test_load_records_dispatch_and_limit():
    assert len(load_records("alpaca", FIXTURES / "alpaca.json", limit=2)) == 2
    with pytest.raises(DataError, match="unknown data format 'sharegpt'"):
        load_records("sharegpt", FIXTURES / "alpaca.json")


def test_read_jsonl_rejects_non_objects(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('[1, 2]\n')
    with pytest.raises(DataError, match=r"list\.jsonl:1: expected a JSON object, got list"):
        read_jsonl(path)
