"""Serve the diffusion-LM explorer page: `python app.py` (http://127.0.0.1:7860; `--help` lists the options).

The page lives in the package (`explorer.page`); this file is the launcher the design card and Hugging Face Spaces
expect at the repository root.
"""

from explorer.page.launch import main

if __name__ == "__main__":
    main()
