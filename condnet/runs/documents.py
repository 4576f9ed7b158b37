"""Text runs: which runs read documents, and the documents `evaluate` and `predict` read.

A run trained on a folder of documents (`modality="text"` in its
config.json) holds its adapted `TextVectorization` inside model.keras. The
commands that read such a run take documents where an image run takes
images: a folder laid out as the training one, document files or folders
of them, a file of one document per line (`-`: standard input) or JSON
lines with a `"text"` field. `calibrate`, `export`, `serve`, `compare` and
`ensemble` (of text runs only, each member reading the documents with its
own vectorizer) take text runs too, and `tune` searches text runs on a
folder of documents. The commands that do not read documents yet
(`backoff`, `unknown`, `explain`, `extend`, `cv`) refuse a text run, or a
folder of documents, in one line (`refuse_text_run`, `refuse_text_folder`).
"""

import json
import sys
from pathlib import Path

from condnet.data.scan import IMAGE_EXTENSIONS
from condnet.data.text import (
    decode_text,
    document_problem,
    looks_like_text,
    read_documents,
    warn_fallbacks,
)


def is_text_run(config):
    """Whether a run's config.json (a dict) describes a run trained on documents."""
    options = config.get("options") if isinstance(config, dict) else None
    return isinstance(options, dict) and options.get("modality") == "text"


def refuse_text_run(run_dir, config, command):
    """A ValueError, in one line, for a command that does not read documents yet."""
    if is_text_run(config):
        raise ValueError(
            f"`condnet {command}` does not support text runs yet: {str(run_dir)!r} was "
            "trained on documents. `condnet evaluate`, `predict`, `calibrate`, `export`, "
            "`serve`, `compare` and `ensemble` read them. "
            f"Received: run_dir={str(run_dir)!r}"
        )


def refuse_text_folder(data_dir, modality, command):
    """A ValueError, in one line, for a command that trains on images only and is given a
    folder of documents (`modality` "text", or "auto" on a folder of mostly text files)."""
    auto = modality == "auto" and Path(data_dir).is_dir() and looks_like_text(data_dir)
    if modality == "text" or auto:
        raise ValueError(
            f"`condnet {command}` does not support text runs yet: {str(data_dir)!r} holds "
            "documents. `condnet train` trains a text run on it, `condnet tune` searches "
            "text runs on it. Received: "
            f"DATA_DIR={str(data_dir)!r}"
        )


# === Documents to predict ===


def document_files(inputs):
    """`[(name, text or None, error or None)]` of document files and folders.

    A file named is read whatever its name; one whose content is not text
    (empty, binary) gets an error instead of a text. A folder gives its
    documents, found as a training folder's are (any name but an image's,
    hidden files left out, empty and binary files skipped), in name order.
    """
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += [(path, None) for path in _folder_documents(item)]
        elif item.exists() or item.is_symlink():
            found.append((item, document_problem(item)))
        else:
            raise ValueError(
                f"No such document file or folder: {str(item)!r}. Pass document files, "
                "folders of them, or --lines / --jsonl FILE. Received: " + repr(str(item))
            )
    if not found:
        raise ValueError(
            "No documents found. Pass document files (text, any extension but an image's) "
            f"or folders holding them. Received: {[str(item) for item in inputs]}"
        )
    return _read(found)


def _folder_documents(folder):
    paths = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.suffix.lower() not in IMAGE_EXTENSIONS
    )
    return [path for path in paths if document_problem(path) is None]


def _read(found):
    readable = [path for path, problem in found if problem is None]
    texts, fallbacks = read_documents(readable)
    warn_fallbacks(", ".join(sorted({str(p.parent) for p in readable})), fallbacks, len(texts))
    texts = iter(texts)
    return [
        (str(path), next(texts), None) if problem is None else (str(path), None, problem)
        for path, problem in found
    ]


def line_documents(source, stdin=None):
    """`[(name, text, None)]`: each non-blank line of the file `source` (`"-"`: standard
    input) is one document, named `SOURCE:LINE`."""
    return [(f"{source}:{number}", line, None) for number, line in _lines(source, stdin)]


def jsonl_documents(source, stdin=None):
    """`[(name, text, None)]`: each non-blank line of the file `source` (`"-"`: standard
    input) is a JSON object whose `"text"` is one document, named `SOURCE:LINE`."""
    documents = []
    for number, line in _lines(source, stdin):
        try:
            record = json.loads(line)
        except ValueError as error:
            record, problem = None, f"it is not JSON ({error})"
        else:
            problem = 'it has no "text" string'
        if not (isinstance(record, dict) and isinstance(record.get("text"), str)):
            raise ValueError(
                f"Line {number} of {source!r} cannot be read: {problem}. --jsonl takes one "
                'JSON object per line with the document in "text", e.g. {"text": "my '
                f'order never came"}}. Received: {line[:80]!r}'
            )
        documents.append((f"{source}:{number}", record["text"], None))
    return documents


def _lines(source, stdin=None):
    """`(line number, line)` of the non-blank lines of `source` (`"-"`: standard input),
    read as the training documents are (UTF-8, else Windows-1252)."""
    if source == "-":
        text = (stdin or sys.stdin).read()
    else:
        if not Path(source).is_file():
            raise ValueError(
                f"No such file: {source!r}. Pass a text file of one document per line, or "
                f"- for standard input. Received: {source!r}"
            )
        text, fell_back = decode_text(Path(source).read_bytes())
        warn_fallbacks(source, int(fell_back), 1)
    numbered = enumerate(text.splitlines(), 1)
    found = [(number, line) for number, line in numbered if line.strip()]
    if not found:
        raise ValueError(f"{source!r} holds no document (every line is blank).")
    return found
