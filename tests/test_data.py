import json
from pathlib import Path

import pytest

from studykit.answers import boxed_answer
from studykit.data import DataError, load_alpaca, load_chat, load_math, load_preferences, load_records, read_jsonl

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


# --- math problems with a gold final answer (MATH, MATH-500, GSM8K) ----------------------------------------------
PAPER = FIXTURES / "paper"


def test_math_takes_the_last_boxed_answer_of_a_worked_solution():
    """MATH's layout (MATH-lighteval): problem, level, type, solution ending in \\boxed{}; nested braces kept."""
    records = load_math(PAPER / "math_train.jsonl")
    first, fraction = records[0], records[1]
    assert (first["prompt"], first["answer"]) == ("What is the value of $x$ if $2x + 3 = 11$?", "4")
    assert fraction["answer"] == "\\frac{3}{4}" and fraction["response"].endswith("$\\boxed{\\frac{3}{4}}$.")
    assert (first["type"], first["level"], first["family"]) == ("Algebra", "Level 1", "math")   # extra columns kept
    assert not {"problem", "solution"} & set(first)                        # held as prompt and response
    assert json.loads(first["entry"]) == {"verifier": "math_verify", "answer": "4"}


def test_math_500_takes_the_answer_field_and_its_unique_id():
    record = load_math(PAPER / "math_500.jsonl")[6]
    assert (record["id"], record["answer"], record["subject"]) == ("test/algebra/106.json", "(1,3)", "Algebra")
    assert record["response"].startswith("Setting $2x + 1 = -x + 4$")     # the worked solution is the SFT target


def test_gsm8k_takes_the_number_after_the_last_hashes_and_keeps_the_reasoning(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    answer = "She sold 48 / 2 = 24 clips in May.\nShe sold 48 + 24 = 1,072 clips in all.\n#### 1,072"
    path.write_text(json.dumps({"question": "How many clips did she sell?", "answer": answer}) + "\n"
                    + json.dumps({"problem": "What is 2 + 2?", "answer": 4}) + "\n")
    gsm8k, bare = load_records("math", path)
    assert (gsm8k["prompt"], gsm8k["answer"], gsm8k["response"]) == ("How many clips did she sell?", "1072", answer)
    assert (bare["answer"], bare["response"]) == ("4", "$\\boxed{4}$")    # no solution: the answer alone, boxed


@pytest.mark.parametrize("text, expected", [
    ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("first \\boxed{1}, then \\boxed{2}", "2"),                            # the last one
    ("\\fbox{7}", "7"),
    ("\\boxed {x^{2}}", "x^{2}"),
    ("\\boxed{\\frac{1}{2}", None),                                         # unbalanced
    ("no box here: 5", None),
])
def test_boxed_answer_balances_braces(text, expected):
    assert boxed_answer(text) == expected


@pytest.mark.parametrize("row, expected", [
    ({"solution": "\\boxed{1}"}, r"line 1: missing field 'problem' \(or 'question'"),
    ({"problem": "1 + 1?"}, r"line 1: missing field 'answer' or 'solution'"),
    ({"problem": "1 + 1?", "solution": "It is 2."},
     r"line 1: field 'solution' has no complete \\boxed\{\.\.\.\} final answer"),
    ({"problem": "1 + 1?", "solution": "\\boxed{ }"}, r"line 1: field 'solution' gives an empty final answer"),
    ({"question": "1 + 1?", "answer": "It is two. ####"}, r"line 1: field 'answer' gives an empty final answer"),
    ({"problem": "1 + 1?", "answer": [2]}, r"line 1: field 'answer' must be a string or a number"),
    ({"problem": 12, "answer": "2"}, r"line 1: field 'problem' must be a non-empty string"),
])
def test_a_bad_math_row_names_file_row_and_field(tmp_path, row, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"bad\.jsonl: {expected}"):
        load_math(path)
