"""The one page parser reads what the rendered page carries."""

from ops.page import parse_page
from tests.support import save


def test_a_rendered_page_yields_token_save_id_messages_and_replica(client, settings):
    save(client, "first <one> & ü")
    page = parse_page(client.get("/").get_data(as_text=True))
    assert page.csrf_token and page.save_id and len(page.save_id) >= 16
    assert page.messages == ["first <one> & ü"]
    assert page.served_by == settings.replica_name
