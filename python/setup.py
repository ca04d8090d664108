"""Builds the ``sparkatron`` package; the jars come from the Maven build of the checkout it sits in.

``pip install ./python`` after ``mvn -DskipTests package`` copies every jar that Maven's classpath file
(``python/target/sparkatron-classpath.txt``) lists into the package, so the installed package needs
nothing else; it also records the checkout, so an install made before the Maven build finds the jars
there once they exist (see ``sparkatron/_jars.py``).
"""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithJars(build_py):
    def run(self):
        super().run()
        pkg = os.path.join(self.build_lib, "sparkatron")
        with open(os.path.join(pkg, "_checkout.py"), "w", encoding="utf-8") as f:
            f.write("# written by setup.py: the checkout this package was installed from\nPYTHON_DIR = %r\n" % HERE)
        classpath = os.path.join(HERE, "target", "sparkatron-classpath.txt")
        if not os.path.isfile(classpath):
            print("sparkatron: %s not found (no Maven build yet): installing without bundled jars; "
                  "they are looked up in the checkout at run time" % classpath)
            return
        with open(classpath, encoding="utf-8") as f:
            entries = [e for e in f.read().strip().split(os.pathsep) if e]
        jars = [e for e in entries if e.endswith(".jar") and os.path.isfile(e)]
        if len(jars) != len(entries):
            print("sparkatron: the classpath lists directories or missing files (a build without `package`?): "
                  "installing without bundled jars")
            return
        target = os.path.join(pkg, "jars")
        os.makedirs(target, exist_ok=True)
        for j in jars:
            shutil.copy2(j, target)
        print("sparkatron: bundled %d jars" % len(jars))


setup(
    packages=["sparkatron", "org.sparkatron", "org.sparkatron.data"],
    cmdclass={"build_py": BuildPyWithJars},
)
