"""Print where, relative to PREFIX, the running interpreter imports packages
installed under PREFIX from: the install directory of the libvdisk package.

    site_dir.py PREFIX

Debian's python3 imports /usr/lib/python3/dist-packages (its "deb_system"
scheme) for packages of prefix /usr, and /usr/local/lib/python3.X/dist-packages
(its default "posix_local" scheme, whose base is /usr) for prefix /usr/local;
meson 1.0's python module installs into lib/python3/dist-packages under any
prefix, which Debian's python3 does not search under /usr/local. Any other
prefix, or another interpreter, gets the standard posix_prefix layout
(PREFIX/lib/python3.X/site-packages, for PYTHONPATH).
"""
import os
import sys
import sysconfig


def site_dir(prefix):
    schemes = sysconfig.get_scheme_names()
    if prefix == "/usr" and "deb_system" in schemes:
        scheme, base = "deb_system", "/usr"
    elif prefix == "/usr/local" and "posix_local" in schemes:
        scheme, base = "posix_local", "/usr"
    else:
        scheme, base = "posix_prefix", prefix
    path = sysconfig.get_path("purelib", scheme, vars={"base": base, "platbase": base})
    return os.path.relpath(path, prefix)


if __name__ == "__main__":
    print(site_dir(sys.argv[1]))
