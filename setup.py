"""cra-agent: Cloud Remote Access device agent for Cumulocity IoT."""
import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path(__file__).with_name("cra").joinpath("__init__.py").read_text()).group(1)

setup(
    name="cra-agent",
    version=VERSION,
    description="Cloud Remote Access device agent for Cumulocity IoT",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["cra", "cra.*"]),
    package_data={"cra.cloud": ["web/*"]},  # the remote access page cra-cloud serves
    py_modules=["cra_agent"],
    install_requires=[
        "websocket-client>=1.2.3",
        "requests>=2.28",
        "pyserial>=3.5",
    ],
    extras_require={
        "cloud": ["aiohttp>=3.9", "cryptography>=38", "asyncssh>=2.14"],
        "dev": ["pytest>=7", "pytest-timeout>=2", "hypothesis>=6", "playwright>=1.40"],
    },
    entry_points={
        "console_scripts": [
            "cra-agent = cra.cli:main",
            "cra-connect = cra.connect:main",
            "cra-cloud = cra.cloud.cli:main",
        ],
    },
)
