# fem_mfc in Docker: Debian 13 (trixie) with the pinned DOLFINx 0.9 stack.
# The package list is env/packages.txt, the same file bin/fem-env builds its root filesystem from.
#   docker build -t fem_mfc .
#   docker run --rm -v "$PWD/results:/opt/fem_mfc/results" fem_mfc            # flagship demo
#   docker run --rm fem_mfc mpirun -n 2 fem-mfc run demos/heat_disk.toml --out /tmp/r
FROM debian:trixie-slim
COPY env/packages.txt /tmp/packages.txt
RUN apt-get update \
 && sed -e 's/#.*//' -e 's/[[:space:]]//g' /tmp/packages.txt | grep -v '^$' \
    | xargs env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/*
ENV OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_rmaps_base_oversubscribe=1 \
    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1 FEM_MFC_IN_ENV=1
WORKDIR /opt/fem_mfc
COPY . /opt/fem_mfc
# The package, installed editable: `import fem_mfc` from any folder, the `fem-mfc` command.
# (Debian's Python is externally managed; nothing but fem_mfc itself is installed by pip.)
RUN pip install --no-deps --no-build-isolation --break-system-packages -e /opt/fem_mfc \
 && rm -rf /root/.cache/pip
VOLUME ["/opt/fem_mfc/results"]
CMD ["python3", "demos/demo_moons.py", "--out", "results/demo"]
