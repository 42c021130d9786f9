"""Java is a hard dependency of pycocoevalcap (PTB tokenizer, METEOR, SPICE): check it before any work starts."""

from __future__ import annotations

import shutil
import subprocess

INSTALL_HINT = (
    "Install a Java runtime and put `java` on PATH: `apt-get install openjdk-17-jre-headless` (Debian/Ubuntu) "
    "or `conda install -c conda-forge openjdk`. BLEU/METEOR/ROUGE-L/CIDEr work with Java 8 or newer; "
    "SPICE is known to need Java 8."
)


class JavaNotFoundError(OSError):
    """`java` is missing or does not run, so caption scoring cannot start."""


def require_java() -> str:
    """Run `java -version` and return its first line (recorded in reports); raise JavaNotFoundError otherwise.

    pycocoevalcap would otherwise fail deep inside a subprocess with a bare FileNotFoundError or BrokenPipeError.
    """
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(
            "caption scoring needs `java` (pycocoevalcap runs the Stanford PTB tokenizer and METEOR in Java), "
            f"and no `java` was found on PATH. {INSTALL_HINT}"
        )
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise JavaNotFoundError(f"`{java} -version` could not run ({e}). {INSTALL_HINT}") from None
    output = (proc.stderr or proc.stdout).strip()
    if proc.returncode != 0:
        raise JavaNotFoundError(f"`{java} -version` failed (exit {proc.returncode}): {output[-500:]}. {INSTALL_HINT}")
    return output.splitlines()[0] if output else java
