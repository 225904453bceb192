"""Job files (docs/cluster.md, "Job files") and repeated command-line options.

A job file is `key = value` lines with the long option names. These tests check what the
file means through cheap commands: `saegap plan` prints the contexts, SAE sites and
intervened passes it was given; a tiny `saegap run` records the seed it used. Refusals follow
test_errors.py's conventions: exit status 1..127, exactly one `saegap: error:` line naming
the file (and line) or the option, and no crash text.

Run with Debian's interpreter:
    SAEGAP_BIN=build/saegap /usr/bin/python3 -m pytest -q tests/python/test_jobfile.py
"""

import os
import re
import shutil

import h5py
import pytest

import saegap_fixtures as fx
import sae_fixtures as sf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FORBIDDEN = ["AddressSanitizer", "UndefinedBehaviorSanitizer", "runtime error:", "Segmentation fault",
             "SIGSEGV", "Abort", "core dumped", "Traceback", "HDF5-DIAG"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, two SAEs and 8 contexts x 8 tokens: plan and run take about a second."""
    d = tmp_path_factory.mktemp("jobfile")
    fx.make_gpt2_model(str(d / "model"), n_layer=2, n_head=2, n_embd=32, n_positions=16, vocab_size=97, seed=1)
    fx.write_tokens_npy(str(d / "t.npy"), fx.random_tokens(8, 8, 97, seed=2, bos=96))
    sf.make_sae(str(d / "saes" / "a"), 32, 64, "blocks.0.hook_resid_pre", model_name="model", seed=3)
    sf.make_sae(str(d / "saes" / "b"), 32, 64, "blocks.1.hook_resid_pre", model_name="model", seed=4)
    return d


def base(world, sae=("saes",)):
    """The lines every job here starts with (absolute paths)."""
    lines = ["model = %s" % (world / "model"), "tokens = %s" % (world / "t.npy")]
    lines += ["sae = %s" % (world / s) for s in sae]
    return lines


def write(path, text):
    """text: str (written as UTF-8, newlines as given) or bytes."""
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def plan(run_saegap, job, *extra, check=True):
    return run_saegap(["plan", str(job), "--ranks", "1", "--threads-per-rank", "1", *extra], check=check)


def planned(p):
    """(contexts, SAE sites, intervened passes per context) from plan's job line."""
    m = re.search(r"job: (\d+) contexts x (\d+) tokens, (\d+) SAE site\(s\), (\d+) intervened passes",
                  p.stdout.decode())
    assert m, p.stdout.decode()
    return int(m.group(1)), int(m.group(3)), int(m.group(4))


def refused(p, *words):
    """One clean user error naming every word in words; returns the message line."""
    err = p.stderr.decode(errors="replace")
    assert 1 <= p.returncode <= 127, (p.returncode, err)
    lines = [ln for ln in err.splitlines() if ln.startswith("saegap: error:")]
    assert len(lines) == 1, err
    for f in FORBIDDEN:
        assert f not in err, err
    for w in words:
        assert str(w) in lines[0], (w, lines[0])
    assert len(lines[0]) < 1200, "a message of %d characters" % len(lines[0])
    return lines[0]


def seed_of_run(run_saegap, job, out, *extra):
    run_saegap(["run", str(job), "--contexts", "2", "--interventions", "sae", "--out", str(out),
                "--threads-per-rank", "1", "--quiet", *extra])
    with h5py.File(out) as f:
        return int(f.attrs["seed"])


# ---------------------------------------------------------------------------------------
# lines of any length


def test_long_comments_do_not_leak_into_keys(world, run_saegap, tmp_path):
    """inih cut lines at 200 characters and read the rest as a line of its own, so the tail of
    a long comment (`# xxx...xxx seed = 5`) set the seed. Here a 10,000-character comment of
    each kind (# line, ; line, inline after a value) ends in `seed = 5`; the keys on the lines
    after them are read, and the seed stays the default 0."""
    tail = " seed = 5"
    job = write(tmp_path / "long.job", "\n".join(
        ["# " + "x" * 10000 + tail, "contexts = 4",
         "; " + "y" * 10000 + tail, "interventions = sae   # " + "z" * 10000 + tail]
        + base(world) + ["samples = 1 ; " + "w" * 10000 + tail, ""]))
    assert planned(plan(run_saegap, job)) == (4, 2, 2)  # 2 sites x the sae intervention
    assert seed_of_run(run_saegap, job, tmp_path / "long.h5") == 0


def test_long_values(world, run_saegap, tmp_path):
    """A 5,000-character value is read whole: 4,999 zeros then 4 is the number 4 (a cut after
    200 characters would read 0, refused as a count < 1); same for the seed, which the run records."""
    job = write(tmp_path / "longval.job", "\n".join(
        base(world) + ["contexts = " + "0" * 4999 + "4", "seed = " + "0" * 4999 + "7"]) + "\n")
    assert planned(plan(run_saegap, job))[0] == 4
    assert seed_of_run(run_saegap, job, tmp_path / "longval.h5") == 7


def test_long_bad_value_is_refused_with_a_short_message(world, run_saegap, tmp_path):
    job = write(tmp_path / "longbad.job", "\n".join(base(world) + ["seed = " + "9" * 5000]) + "\n")
    msg = refused(plan(run_saegap, job, check=False), job, "line 4", "seed", "5000 bytes")
    assert "9" * 100 not in msg


# ---------------------------------------------------------------------------------------
# each key once; sae repeats


@pytest.mark.parametrize("key,first,second", [
    ("seed", "5", "6"),                       # integer
    ("seed", "5", "5"),                       # even with the same value
    ("contexts", "4", "6"),                   # count
    ("latent-noise", "0.1", "0.2"),           # real
    ("quiet", "true", "false"),               # flag
    ("interventions", "sae", "all"),          # string
    ("model", "/a", "/b"),                    # path (refused before any file is opened)
])
def test_duplicate_keys_are_refused_naming_both_lines(world, run_saegap, tmp_path, key, first, second):
    lines = base(world) + ["%s = %s" % (key, first), "", "# the same key again", "%s = %s" % (key, second)]
    job = write(tmp_path / "dup.job", "\n".join(lines) + "\n")
    at = [i for i, ln in enumerate(lines, 1) if ln.startswith(key + " =")]  # model: base's line 1 and line 4
    msg = refused(plan(run_saegap, job, check=False), job, "'%s'" % key, "twice",
                  "on line %d and line %d" % (at[0], at[1]))
    assert "sae" in msg  # says which key may repeat


def test_sae_key_repeats(world, run_saegap, tmp_path):
    job = write(tmp_path / "two.job", "\n".join(base(world, sae=("saes/a", "saes/b")) + ["contexts = 4"]) + "\n")
    assert planned(plan(run_saegap, job))[:2] == (4, 2)


# ---------------------------------------------------------------------------------------
# the command line: each option once, --sae repeats, and it overrides the file


@pytest.mark.parametrize("args,option", [
    (["--seed", "1", "--seed", "2"], "--seed"),
    (["--seed=1", "--seed", "1"], "--seed"),
    (["--contexts", "4", "--contexts", "6"], "--contexts"),
    (["--quiet", "--quiet"], "--quiet"),
    (["--latent-noise", "0.1", "--latent-noise", "0.3"], "--latent-noise"),
    (["--model", "/a", "--model", "/b"], "--model"),
])
def test_repeated_options_are_refused(world, run_saegap, tmp_path, args, option):
    job = write(tmp_path / "ok.job", "\n".join(base(world)) + "\n")
    msg = refused(plan(run_saegap, job, *args, check=False), option, "twice")
    assert "--sae" in msg


def test_repeated_sae_option_adds_folders(world, run_saegap):
    p = run_saegap(["plan", "--model", world / "model", "--tokens", world / "t.npy", "--sae", world / "saes/a",
                    "--sae", world / "saes/b", "--contexts", "4", "--ranks", "1", "--threads-per-rank", "1"])
    assert planned(p)[:2] == (4, 2)


def test_command_line_overrides_job_keys(world, run_saegap, tmp_path):
    """An option replaces the file's key (not a repetition); --sae replaces every sae line."""
    job = write(tmp_path / "over.job", "\n".join(
        base(world, sae=("saes/a", "saes/b")) + ["contexts = 4", "interventions = all", "seed = 5"]) + "\n")
    assert planned(plan(run_saegap, job))[:2] == (4, 2)
    c, sites, passes = planned(plan(run_saegap, job, "--contexts", "6", "--sae", world / "saes/b",
                                    "--interventions", "sae"))
    assert (c, sites, passes) == (6, 1, 1)
    assert seed_of_run(run_saegap, job, tmp_path / "over.h5", "--seed", "9") == 9


# ---------------------------------------------------------------------------------------
# what the current job files accept keeps working


def test_demo_job_parses(run_saegap, monkeypatch):
    """The README's job, as jobs/run-demo.sh plans it (paths relative to the repository)."""
    monkeypatch.chdir(REPO)
    p = run_saegap(["plan", "jobs/demo.job", "--ranks", "2", "--threads-per-rank", "1"])
    assert planned(p)[:2] == (64, 9)


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(REPO, "jobs")) if n.endswith(".job")))
def test_every_shipped_job_file_parses(run_saegap, monkeypatch, name):
    """Every jobs/*.job is valid syntax with known keys: whatever plan says about its inputs
    (the full sweep's paths are placeholders), it is not a complaint about the job file, and
    an inline # comment is not part of a path."""
    monkeypatch.chdir(REPO)
    path = os.path.join("jobs", name)
    p = run_saegap(["plan", path, "--ranks", "2", "--threads-per-rank", "1"], check=False)
    err = p.stderr.decode(errors="replace")
    assert ("saegap: error: %s:" % path) not in err, err
    assert "Hugging Face folder" not in err and "#" not in err, err
    if p.returncode != 0:
        refused(p)


def test_syntax_the_job_files_use(world, run_saegap, tmp_path):
    """Comments with # and ;, blank lines, blanks around = (or none), tabs, indented lines,
    flags as true/false/yes/no/1/0 in any case, values holding = and ;."""
    lines = ["# comment", "; comment too", "", "   ", "\t# indented comment"] + base(world) + [
        "contexts=4", "  samples\t=\t1  ", "interventions = sae,eps_random ; inline", "quiet = YES",
        "allow-model-mismatch = 0", "bos = exclude # inline", ""]
    job = write(tmp_path / "syntax.job", "\n".join(lines))
    assert planned(plan(run_saegap, job)) == (4, 2, 4)
    for v in ["true", "False", "yes", "No", "1", "0"]:
        write(tmp_path / "flag.job", "\n".join(base(world) + ["contexts = 4", "quiet = " + v]))
        plan(run_saegap, tmp_path / "flag.job")
    write(tmp_path / "flag.job", "\n".join(base(world) + ["quiet = maybe"]))
    refused(plan(run_saegap, tmp_path / "flag.job", check=False), "line 4", "quiet", "maybe")


def test_crlf_line_ends(world, run_saegap, tmp_path):
    job = write(tmp_path / "crlf.job", "\r\n".join(
        ["# written on Windows"] + base(world) + ["contexts = 4", "interventions = sae", "quiet = true", ""]))
    assert planned(plan(run_saegap, job)) == (4, 2, 2)


def test_utf8_bom(world, run_saegap, tmp_path):
    """A byte-order mark before the first key is skipped (else the key would be '\\ufeffmodel')."""
    job = write(tmp_path / "bom.job", b"\xef\xbb\xbf" + ("\r\n".join(base(world) + ["contexts = 4"]) + "\r\n").encode())
    assert planned(plan(run_saegap, job))[0] == 4


def test_quoted_values(world, run_saegap, tmp_path):
    """Quotes keep ' #', ' ;' and end blanks in a value; a comment may follow them."""
    odd = tmp_path / "my model #1 ;x "
    shutil.copytree(world / "model", odd)
    lines = base(world)[1:] + ['model = "%s"   # comment' % odd, "interventions = 'sae' ; comment", "contexts = 4"]
    job = write(tmp_path / "quoted.job", "\n".join(lines) + "\n")
    assert planned(plan(run_saegap, job, "--allow-model-mismatch")) == (4, 2, 2)


# ---------------------------------------------------------------------------------------
# refused, naming the file and line


@pytest.mark.parametrize("line,words", [
    ("[run]", ["section"]),
    ("seed = 5\x00", ["NUL", "column 9"]),
    ("seed = 5\x01", ["control character 0x01"]),
    ("seed = 5\rcontexts = 4", ["carriage return"]),
    (b"model = /data/mod\xe9le", ["0xE9", "not UTF-8", "column 18"]),
    (b"seed = 5 # caf\xc3", ["0xC3", "not UTF-8"]),
    ('model = "/data/gpt2', ["quote", "not closed", "model"]),
    ('model = "/data/gpt2" x', ["after the closing quote"]),
    ("seed =", ["'seed'", "no value"]),
    ("seed = # none", ["'seed'", "no value"]),
    ("seed 5", ["'seed 5'", "not a key = value line"]),
    ("= 5", ["no key"]),
    ("frobnicate = 1", ["unknown key 'frobnicate'"]),
    ("Seed = 1", ["unknown key 'Seed'"]),
    ("resume = true", ["'resume'", "--resume"]),
    ("help = true", ["'help'"]),
    ("seed = -1", ["seed '-1'", "non-negative"]),
    ("contexts = 4x", ["contexts '4x'"]),
])
def test_bad_lines_are_refused_naming_file_and_line(world, run_saegap, tmp_path, line, words):
    head = "\n".join(["# a job"] + base(world)) + "\n"
    data = head.encode() + (line if isinstance(line, bytes) else line.encode()) + b"\nsamples = 1\n"
    job = write(tmp_path / "bad.job", data)
    refused(plan(run_saegap, job, check=False), job, "line 5", *words)


def test_unreadable_job_files(world, run_saegap, tmp_path):
    refused(plan(run_saegap, tmp_path / "missing.job", check=False), "missing.job", "No such file")
    (tmp_path / "dir.job").mkdir()
    refused(plan(run_saegap, tmp_path / "dir.job", check=False), "dir.job", "directory")
    big = tmp_path / "big.job"
    with open(big, "wb") as f:
        f.write(b"# " + b"x" * (17 << 20) + b"\n")
    refused(plan(run_saegap, big, check=False), "big.job", "larger than 16 MiB")


def test_empty_and_comment_only_job_file_adds_nothing(world, run_saegap, tmp_path):
    job = write(tmp_path / "empty.job", "# nothing here\n\n")
    p = plan(run_saegap, job, "--model", world / "model", "--tokens", world / "t.npy", "--sae", world / "saes",
             "--contexts", "4")
    assert planned(p)[:2] == (4, 2)


def test_underscore_spelling_of_a_key(world, run_saegap, tmp_path):
    """'_' stands for '-' in keys (SAELens's and YAML's spelling: latent_noise, prepend_bos); both
    spellings of one key are the same key, given twice."""
    job = write(tmp_path / "under.job", "\n".join(base(world) + ["contexts = 4", "latent_noise = 0.25"]) + "\n")
    out = tmp_path / "under.h5"
    seed_of_run(run_saegap, job, out)
    with h5py.File(out) as f:
        assert float(f.attrs["latent_noise_sigma"]) == 0.25
    job = write(tmp_path / "both.job", "\n".join(base(world) + ["latent_noise = 0.25", "latent-noise = 0.5"]) + "\n")
    refused(plan(run_saegap, job, check=False), job, "twice")
    job = write(tmp_path / "bad.job", "\n".join(base(world) + ["latent__noise = 0.25"]) + "\n")
    refused(plan(run_saegap, job, check=False), job, "unknown key")
