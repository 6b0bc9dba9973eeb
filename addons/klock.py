"""mitmproxy script shim: ``mitmdump -s addons/klock.py --mode reverse:https://API ...``."""

from klockproxy.proxy.addon import KlockProxy

addons = [KlockProxy()]
