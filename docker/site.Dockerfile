# A hospital's ECE-FL site client: NVFlare client + the ecefl training/preprocessing code, CPU torch.
# Build from the repository root: docker build -f docker/site.Dockerfile -t ecefl-site .
# Needs only the package registries (PyPI, the PyTorch CPU index) while building; nothing at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /opt/ecefl

# CPU wheel of torch first (a plain `torch` pulls the multi-GB CUDA build); for a GPU site use a CUDA base image
# and drop the index URL.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml constraints.txt README.md ./
COPY custom ./custom
COPY site_preprocess ./site_preprocess
COPY jobs ./jobs
COPY poc ./poc
RUN pip install -c constraints.txt '.[dicom-compressed]'

# The site's startup kit (from provisioning) is mounted at /kit; its local/ holds ecefl_site.json (datalist path)
# and, if the site has one, privacy.json. Data: /data (DICOM, read-only), /out (preprocessing outputs).
VOLUME ["/kit", "/data", "/out"]
WORKDIR /kit
CMD ["bash", "-c", "bash startup/sub_start.sh 2>&1 | tee -a /kit/log.txt"]
