"""Finds the Sparkatron jars (the project's three modules and their runtime libraries, without Spark).

Looked for in this order, the first that has them wins:

1. ``SPARKATRON_JARS``: jar paths separated by ``,`` or ``:`` (a cluster's own copies, say);
2. the jars bundled into the installed package (``pip install ./python`` after the Maven build copies them);
3. the checkout the package was installed from or runs in: the classpath file the Maven build writes
   (``python/target/sparkatron-classpath.txt``), so a build after the install is found too.
"""
import glob
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
CLASSPATH_FILE = os.path.join("target", "sparkatron-classpath.txt")


def _checkout_python_dirs():
    dirs = [os.path.dirname(_HERE)]  # running from the checkout (python/ on sys.path, or an editable install)
    try:
        from sparkatron import _checkout  # written at install time: where the package was installed from

        dirs.append(_checkout.PYTHON_DIR)
    except ImportError:
        pass
    return dirs


def _from_classpath_file(python_dir):
    path = os.path.join(python_dir, CLASSPATH_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        entries = [e for e in f.read().strip().split(os.pathsep) if e]
    missing = [e for e in entries if not os.path.exists(e)]
    if missing:
        raise RuntimeError(
            "sparkatron: %s lists %d missing jar(s), e.g. %s: rebuild the checkout (mvn -DskipTests package)"
            % (path, len(missing), missing[0]))
    return entries


def jars():
    """The jar paths Spark needs for Sparkatron (``spark.jars``). Raises RuntimeError naming what to do."""
    env = os.environ.get("SPARKATRON_JARS")
    if env:
        entries = [e for e in env.replace(",", os.pathsep).split(os.pathsep) if e]
        missing = [e for e in entries if not os.path.exists(e)]
        if missing:
            raise RuntimeError("sparkatron: SPARKATRON_JARS names missing files: %s" % ", ".join(missing))
        return entries
    bundled = sorted(glob.glob(os.path.join(_HERE, "jars", "*.jar")))
    if bundled:
        return bundled
    for d in _checkout_python_dirs():
        found = _from_classpath_file(d)
        if found:
            return found
    raise RuntimeError(
        "sparkatron: no Sparkatron jars found. Build the checkout (mvn -B -ntp -DskipTests package) and "
        "reinstall (pip install ./python), or set SPARKATRON_JARS to the jar paths.")
