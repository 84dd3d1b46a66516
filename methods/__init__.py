"""Built-in methods of upgradebench, each registered through the ``upgradebench.methods`` entry-point group."""
