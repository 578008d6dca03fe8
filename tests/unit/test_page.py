"""The one page parser reads what the rendered page carries."""

from ops.page import parse_page
from tests.support import save


def test_a_rendered_page_yields_token_save_id_messages_and_replica(client, settings):
    save(client, "first <one> & ü")
    page = parse_page(client.get("/").get_data(as_text=True))
    assert page.csrf_token and page.save_id and len(page.save_id) >= 16
    assert page.messages == ["first <one> & ü"]
    assert page.served_by == settings.replica_name


def test_attribute_order_markup_and_whitespace_do_not_matter() -> None:
    html = (
        '<form><input value="tok-1" type="hidden" name="csrf_token"></form>'
        '<ol id="messages"><li class="message">a &lt;b&gt; &amp; ü</li>'
        '<li class="message">\n  second\n</li></ol>'
        '<span class="x" id="served-by">pod-1</span><input name="csrf_token" value="tok-2">'
    )
    page = parse_page(html)
    assert page.csrf_token == "tok-1"
    assert page.messages == ["a <b> & ü", "second"]
    assert page.served_by == "pod-1"
