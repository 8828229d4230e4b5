"""The quoting filters, one by one, and against the real parsers where we have them offline.

systemd's own parser (`systemd --test`) reads back Environment= and ExecStart= lines; a POSIX
shell reads back the EnvironmentFile= lines (systemd's env-file parser follows the shell's
double-quote rules: backslash escapes only `"`, `\\`, `` ` `` and `$`).
"""

from __future__ import annotations

import subprocess

import pytest

from provision.render.filters import (
    env_file_value,
    env_name,
    host_port,
    modelfile_value,
    nginx_value,
    systemd_arg,
    systemd_env,
    systemd_text,
    unit_name,
    watts,
)
from tests.systemd_root import argv, parsed_unit

CONTROL = ["a\nb", "a\rb", "tab\there", "nul\x00", "esc\x1b[0m", "del\x7f"]
TRICKY = [
    "plain",
    "two words",
    'double "quote"',
    "back\\slash",
    "it's",
    "100%",
    "%n%i",
    "$HOME ${HOME}",
    "semi;colon",
    "#hash",
    "ünïcödé",
    "",
]


# --- systemd Environment= ----------------------------------------------------------------------


def test_systemd_env_quotes_the_whole_assignment() -> None:
    assert systemd_env(("OLLAMA_HOST", "127.0.0.1:11434")) == '"OLLAMA_HOST=127.0.0.1:11434"'


def test_systemd_env_escapes_backslash_quote_and_percent() -> None:
    assert systemd_env(("K", 'a\\b"c%d')) == '"K=a\\\\b\\"c%%d"'


def test_systemd_env_leaves_dollar_alone() -> None:
    assert systemd_env(("K", "$HOME")) == '"K=$HOME"'


@pytest.mark.parametrize("value", CONTROL)
def test_systemd_env_refuses_control_characters(value: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        systemd_env(("K", value))


@pytest.mark.parametrize("name", ["1ABC", "A B", "A=B", "", "A-B", "A\nB"])
def test_systemd_env_refuses_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        systemd_env((name, "v"))


def test_env_name_accepts_ordinary_names() -> None:
    assert env_name("CUDA_VISIBLE_DEVICES") == "CUDA_VISIBLE_DEVICES"
    assert env_name("_x1") == "_x1"


# --- systemd ExecStart= words ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "rendered"),
    [
        ("/srv/models/a.gguf", "/srv/models/a.gguf"),
        ("CUDA0,CUDA1", "CUDA0,CUDA1"),
        ("llama3.3:70b", "llama3.3:70b"),
        ("-ts", "-ts"),
        ("100%", "100%%"),
        ("$HOME", "$$HOME"),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("it's", '"it\'s"'),
        (";", "\\;"),
        ("", '""'),
        ("50% of $X y", '"50%% of $$X y"'),
    ],
)
def test_systemd_arg(word: str, rendered: str) -> None:
    assert systemd_arg(word) == rendered


@pytest.mark.parametrize("value", CONTROL)
def test_systemd_arg_refuses_control_characters(value: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        systemd_arg(value)


def test_systemd_text_doubles_percent_and_refuses_newlines() -> None:
    assert systemd_text("llama-server 100%") == "llama-server 100%%"
    with pytest.raises(ValueError):
        systemd_text("x\n[Service]")


@pytest.mark.parametrize(
    "name", ["ollama.service", "ollama@0.service", "llama-server-llama3.3-70b.service"]
)
def test_unit_name_accepts_unit_names(name: str) -> None:
    assert unit_name(name) == name


@pytest.mark.parametrize(
    "name", ["a b.service", "x.service\nExecStart=/bin/sh", "ollama", "%i.service", ""]
)
def test_unit_name_refuses_what_is_not_a_unit_name(name: str) -> None:
    with pytest.raises(ValueError):
        unit_name(name)


def test_systemd_parses_back_what_the_filters_wrote() -> None:
    """The real parser: every Environment= value and ExecStart= word survives unchanged."""
    environment = "\n".join(
        f"Environment={systemd_env((f'V{i}', v))}" for i, v in enumerate(TRICKY)
    )
    words = [w for w in TRICKY if w] + [";", "", "-x"]
    command = " ".join(systemd_arg(w) for w in ["/usr/local/bin/llama-server", *words])
    unit = f"[Unit]\nDefaultDependencies=no\n[Service]\n{environment}\nExecStart={command}\n"
    settings = parsed_unit({"quoting.service": unit}, "quoting.service")
    assert settings["Environment"] == [f"V{i}={v}" for i, v in enumerate(TRICKY)]
    (command_line,) = settings["ExecStart"]
    # systemd keeps `$$` in argv and turns it into `$` only when it execs the command.
    expected = [w.replace("$", "$$") for w in ["/usr/local/bin/llama-server", *words]]
    assert argv(command_line) == expected


def test_systemd_parses_back_description_text() -> None:
    unit = f"[Unit]\nDescription={systemd_text('llama-server 100% %n')}\nDefaultDependencies=no\n"
    unit += "[Service]\nExecStart=/bin/true\n"
    settings = parsed_unit({"text.service": unit}, "text.service")
    assert settings["Description"] == ["llama-server 100% %n"]


@pytest.mark.parametrize("text", ["model\\", "model \\ ", "a\\\\"])
def test_systemd_text_refuses_a_trailing_backslash(text: str) -> None:
    with pytest.raises(ValueError, match="ends in a backslash"):
        systemd_text(text)


def test_a_trailing_backslash_would_swallow_the_next_line() -> None:
    """Why: systemd's own parser joins the next directive into Description=, while a
    backslash inside the text is kept as it is."""
    unit = "[Unit]\nDescription=model\\\nDefaultDependencies=no\n[Service]\nExecStart=/bin/true\n"
    settings = parsed_unit({"swallow.service": unit}, "swallow.service")
    assert settings["Description"] == ["model DefaultDependencies=no"]
    text = systemd_text("a\\b")
    inside = f"[Unit]\nDescription={text}\n[Service]\nExecStart=/bin/true\n"
    assert parsed_unit({"inside.service": inside}, "inside.service")["Description"] == ["a\\b"]


# --- EnvironmentFile= ------------------------------------------------------------------------


def test_env_file_value_always_double_quotes() -> None:
    assert env_file_value("127.0.0.1:11435") == '"127.0.0.1:11435"'
    assert env_file_value('a"b\\c`d$e') == '"a\\"b\\\\c\\`d\\$e"'


@pytest.mark.parametrize("value", CONTROL)
def test_env_file_value_refuses_control_characters(value: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        env_file_value(value)


def test_a_shell_reads_back_the_environment_file(tmp_path: pytest.TempPathFactory) -> None:
    lines = [f"V{i}={env_file_value(v)}" for i, v in enumerate(TRICKY)]
    env_file = tmp_path / "x.env"  # type: ignore[operator]
    env_file.write_text("# comment\n" + "\n".join(lines) + "\n", encoding="utf-8")
    script = f". {env_file}; " + " ".join(f'printf "%s\\0" "$V{i}";' for i in range(len(TRICKY)))
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == TRICKY


# --- Modelfile ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["qwen2.5:32b", "/srv/models/100%_$x.gguf", 8192, "hf.co/org/model:Q4_K_M"]
)
def test_modelfile_value_passes_one_line_values_through(value: object) -> None:
    assert modelfile_value(value) == str(value)


@pytest.mark.parametrize(
    "value",
    [
        *CONTROL,
        "x\nPARAMETER num_gpu 999",
        "",
        " lead",
        "trail ",
        '"quoted"',
        '"""\nSYSTEM x\n"""',
        "no\u00a0break",  # Ollama drops what Go's strconv.IsPrint refuses: it would read "nobreak"
        "zero\u200bwidth",
        "line\u2028separator",
    ],
)
def test_modelfile_value_refuses_what_ollama_would_read_differently(value: str) -> None:
    with pytest.raises(ValueError):
        modelfile_value(value)


# --- nginx --------------------------------------------------------------------------------------


def test_nginx_value_plain_and_quoted() -> None:
    assert nginx_value("127.0.0.1:11435") == "127.0.0.1:11435"
    assert nginx_value("[::1]:11434") == "[::1]:11434"
    assert nginx_value("a b;c{d}") == '"a b;c{d}"'
    assert nginx_value('q"\\') == '"q\\"\\\\"'


@pytest.mark.parametrize("value", [*CONTROL, "$host", "a${x}"])
def test_nginx_value_refuses_newlines_and_variables(value: str) -> None:
    with pytest.raises(ValueError):
        nginx_value(value)


def test_host_port_brackets_ipv6() -> None:
    assert host_port(("127.0.0.1", 11434)) == "127.0.0.1:11434"
    assert host_port(("::1", 11434)) == "[::1]:11434"
    assert host_port(("gpu-box.local", 80)) == "gpu-box.local:80"


# --- watts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "text"), [(150.0, "150"), (337.5, "337"), (450, "450")])
def test_watts_whole_and_rounded_down(value: float, text: str) -> None:
    assert watts(value) == text


@pytest.mark.parametrize("value", [0, -5, float("nan"), float("inf")])
def test_watts_refuses_nonsense(value: float) -> None:
    with pytest.raises(ValueError):
        watts(value)
