"""One module (or small package) per method: Config, init, jitted steps, host schedule."""
